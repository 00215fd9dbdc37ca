//! The room side of joining through another server: the membership event this server builds
//! from a resident's `make_join`/`make_leave`/`make_knock` template, and taking what a
//! resident's `send_join` answered (the state before the join and its auth chain), checking
//! all of it, and placing the join on that state. Which servers are asked and the handshake's
//! requests are the network's business (`crate::remote_membership`, `invites`).
//!
//! The checks are the receive pipeline's (`receive`): every event of the state and the auth
//! chain goes through steps 1 to 4 as an outlier (format, signatures, content hash, its own
//! auth events). A state event that fails them is left out of the state (as Synapse does: one
//! unverifiable event does not keep a user out of a room), but an answer whose create event
//! fails, or that is not one room's state, is refused whole; the join itself then goes through
//! all six steps with what is left of the answered state as the state before it, so an answer
//! missing what the join rests on is refused too. Only an accepted
//! join gives the room a current state here (`CurrentStateChange::Adopt`), so a refused answer
//! leaves nothing a client can see: at most the room's row and outliers, which show nowhere.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, Pdu, RoomVersion,
    canonical::parse_object,
    pdu::{EventSigner, build_pdu},
    receipt,
    verify::ServerKeys,
};
use myelin_store::RoomRow;
use ruma::{ServerName, UserId};

use super::{
    Rooms,
    receive::{OutlierTimings, Received},
};
use crate::{Error, Result, now_millis};

/// What a resident server answered to `send_join`, as raw PDUs.
pub struct ResidentJoinAnswer<'a> {
    /// The join event (the resident's signed copy when it gave one).
    pub join: &'a [u8],
    /// The room's state before the join.
    pub state: &'a [&'a [u8]],
    /// The auth chains of the state and of the join.
    pub auth_chain: &'a [&'a [u8]],
}

/// How long the placing of a join through another server took, step by step: what the one
/// log line per remote join reports (`Services::join_room`), for operators to see where the
/// time of a large room's join goes.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlacedJoinTimings {
    /// The answered state's events counted and checked for shape (one per key, a create).
    pub state_checks: Duration,
    /// The state and auth chain as outliers, step by step.
    pub outliers: OutlierTimings,
    /// The answered state stored as a state group.
    pub state_group: Duration,
    /// The join itself through all six steps, appended on that state.
    pub join_event: Duration,
    /// Events in the answered state and auth chain.
    pub state_events: usize,
    pub auth_chain_events: usize,
}

impl PlacedJoinTimings {
    /// The outliers' steps, in milliseconds: formats, signatures and hashes, auth, persistence.
    pub fn outlier_ms(&self) -> [u128; 4] {
        let o = &self.outliers;
        [o.formats, o.signatures, o.auth, o.persist].map(|d| d.as_millis())
    }
}

impl Rooms {
    /// Whether this server is in room `room_id`: a local user is joined to it. A room this
    /// server only heard of (an invite from another server), or left, is joined through a
    /// server that is in it.
    pub async fn is_resident(&self, room_id: &str) -> Result<bool> {
        Ok(match self.store.room(room_id).await? {
            Some(room) => {
                self.store
                    .server_in_room(room.room_nid, self.server_name.as_str())
                    .await?
            }
            None => false,
        })
    }

    /// `user`'s `membership` event in room `room_id` from the template `server` answered to
    /// `make_join`, `make_leave` or `make_knock`: only the fields a template places the event
    /// with (prev and auth events, depth) are taken, after checking it is this user's event of
    /// that membership in this room; the content is `content` with the membership (and, for a
    /// restricted join, the authorising user the resident named); signed by this server, or in
    /// account-key rooms by the user's account key, whose key-form id the template must name.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn member_event_from_template(
        &self,
        server: &ServerName,
        room_id: &str,
        version: &RoomVersion,
        user: &UserId,
        template: &[u8],
        membership: &str,
        mut content: CanonicalJsonObject,
    ) -> Result<Pdu> {
        let member = self.room_user_id(version, user).await?;
        let bad = |why: &str| {
            Error::BadGateway(format!(
                "{server} gave an unusable make_{membership} template: {why}"
            ))
        };
        let template = parse_object(template).map_err(|_| bad("not canonical JSON"))?;
        let string = |object: &CanonicalJsonObject, key: &str| match object.get(key) {
            Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
            _ => None,
        };
        let given = match template.get("content") {
            Some(CanonicalJsonValue::Object(given)) => Some(given),
            _ => None,
        };
        if string(&template, "type").as_deref() != Some("m.room.member")
            || string(&template, "state_key").as_deref() != Some(member.as_str())
            || string(&template, "sender").as_deref() != Some(member.as_str())
            || string(&template, "room_id").as_deref() != Some(room_id)
            || given.and_then(|c| string(c, "membership")).as_deref() != Some(membership)
        {
            return Err(bad(&format!(
                "it is not this user's {membership} in this room"
            )));
        }
        if membership == "join"
            && let Some(authoriser) = given.and_then(|c| c.get("join_authorised_via_users_server"))
        {
            content.insert(
                "join_authorised_via_users_server".to_owned(),
                authoriser.clone(),
            );
        }
        content.insert(
            "membership".to_owned(),
            CanonicalJsonValue::String(membership.to_owned()),
        );
        let mut partial = CanonicalJsonObject::new();
        for key in [
            "type",
            "room_id",
            "sender",
            "state_key",
            "prev_events",
            "auth_events",
            "depth",
        ] {
            if let Some(value) = template.get(key) {
                partial.insert(key.to_owned(), value.clone());
            }
        }
        partial.insert("content".to_owned(), CanonicalJsonValue::Object(content));
        partial.insert(
            "origin_server_ts".to_owned(),
            CanonicalJsonValue::Integer(super::int(now_millis())?),
        );
        self.assign_event_id(&mut partial, version);
        // Account-key rooms: signed by the member's account key, never the server key.
        let account_key = if version.uses_account_keys() {
            Some(self.account_keys.signing_key(user.localpart()).await?)
        } else {
            None
        };
        let signer = match &account_key {
            Some(pair) => EventSigner::Account(pair),
            None => self.keys.event_signer(),
        };
        build_pdu(partial, version, signer).map_err(|e| bad(&e.to_string()))
    }

    /// Places a join through another server (see the module docs). Errors are the answer's
    /// fault ([`Error::BadGateway`]) or the join's (the auth rules refuse it: `Forbidden`);
    /// either way the join did not happen.
    pub async fn place_remote_join(
        &self,
        room_id: &str,
        version: &'static RoomVersion,
        answer: ResidentJoinAnswer<'_>,
        keys: &ServerKeys,
    ) -> Result<PlacedJoinTimings> {
        let mut timings = PlacedJoinTimings {
            state_events: answer.state.len(),
            auth_chain_events: answer.auth_chain.len(),
            ..PlacedJoinTimings::default()
        };
        let started = Instant::now();
        let bad = |why: String| Error::BadGateway(format!("The joined server's answer: {why}"));
        let join = receipt::check_format(version, answer.join)
            .map_err(|e| bad(format!("the join event is invalid: {e}")))?;
        if join.room_id_or_own() != room_id {
            return Err(bad("the join event is for another room".to_owned()));
        }

        // The state: valid events of this room, one per key, with a create event.
        let mut keys_seen: HashSet<(String, String)> = HashSet::new();
        let mut state_ids: Vec<String> = Vec::with_capacity(answer.state.len());
        let mut create: Option<(String, String)> = None;
        for bytes in answer.state {
            let pdu = receipt::check_format(version, bytes)
                .map_err(|e| bad(format!("a state event is invalid: {e}")))?;
            if pdu.room_id_or_own() != room_id {
                return Err(bad(format!(
                    "state event {} is of another room",
                    pdu.event_id()
                )));
            }
            let Some(state_key) = pdu.state_key() else {
                return Err(bad(format!(
                    "{} in the state is not a state event",
                    pdu.event_id()
                )));
            };
            if !keys_seen.insert((pdu.event_type().to_owned(), state_key.to_owned())) {
                return Err(bad(format!(
                    "the state holds two events for ({}, {state_key})",
                    pdu.event_type()
                )));
            }
            if pdu.event_type() == "m.room.create" && state_key.is_empty() {
                create = Some((pdu.event_id().to_owned(), pdu.sender().to_owned()));
            }
            state_ids.push(pdu.event_id().to_owned());
        }
        let Some((create_id, creator)) = create else {
            return Err(bad("the state has no create event".to_owned()));
        };
        timings.state_checks = started.elapsed();

        let room = self
            .room_for_remote_join(room_id, version, &creator)
            .await?;
        if room.room_version != version.id() {
            return Err(bad(format!(
                "the room is version {} here, the answer says {}",
                room.room_version,
                version.id()
            )));
        }

        // Steps 1 to 4 for the state and its auth chains, stored as outliers.
        let events: Vec<&[u8]> = answer
            .auth_chain
            .iter()
            .chain(answer.state.iter())
            .copied()
            .collect();
        let outcomes = self
            .receive_outliers_timed(room_id, &events, keys, &mut timings.outliers)
            .await?;
        // A state event this server cannot vouch for (its signature fails or its key cannot
        // be had, events it rests on were left out, or its own auth events refuse it) is left
        // out of the state, as another server's events would be anywhere else; the join then
        // stands or falls on what is left (its own auth events must be there). Events of the
        // auth chain only matter through the state events that cite them.
        let state_set: HashSet<&str> = state_ids.iter().map(String::as_str).collect();
        let mut left_out: HashSet<String> = HashSet::new();
        for outcome in &outcomes {
            let Some(id) = outcome.event_id.as_deref() else {
                continue;
            };
            if !state_set.contains(id)
                || matches!(
                    outcome.outcome,
                    Received::Accepted | Received::AlreadyStored
                )
            {
                continue;
            }
            if id == create_id {
                return Err(bad(format!("the create event {id}: {:?}", outcome.outcome)));
            }
            tracing::warn!(%room_id, event_id = id, outcome = ?outcome.outcome, "left a state event of a send_join answer out");
            left_out.insert(id.to_owned());
        }
        state_ids.retain(|id| !left_out.contains(id));

        // The answered state as a state group of its own, the state after each of the join's
        // prev events (which this server does not have).
        let started = Instant::now();
        let ids: Vec<&str> = state_ids.iter().map(String::as_str).collect();
        let rows = self.store.events_by_ids(&ids).await?;
        let mut entries: Vec<(&str, &str, i64)> = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.room_nid != room.room_nid {
                return Err(bad(format!(
                    "state event {} is of another room",
                    row.event_id
                )));
            }
            if matches!(row.status, myelin_store::EventStatus::Rejected(_)) {
                return Err(bad(format!("state event {} was rejected", row.event_id)));
            }
            if let Some(key) = row.state_key.as_deref() {
                entries.push((row.event_type.as_str(), key, row.event_nid));
            }
        }
        if entries.len() != ids.len() {
            return Err(bad("part of the state could not be stored".to_owned()));
        }
        let group = self
            .store
            .create_state_group(room.room_nid, None, &entries)
            .await?;
        let prev_states: HashMap<String, i64> = join
            .prev_events()
            .map(|id| (id.to_owned(), group))
            .collect();
        timings.state_group = started.elapsed();

        let started = Instant::now();
        let outcome = self
            .receive_join_through_resident(room_id, answer.join, keys, &prev_states)
            .await?
            .pop()
            .map(|received| received.outcome);
        timings.join_event = started.elapsed();
        match outcome {
            Some(Received::Accepted | Received::AlreadyStored) => Ok(timings),
            Some(Received::Rejected(reason)) => Err(Error::Forbidden(format!(
                "The room's state does not allow the join: {reason}"
            ))),
            other => Err(bad(format!("the join event: {other:?}"))),
        }
    }

    /// The room's row, created (with its version and creator) if this server has never heard
    /// of the room.
    async fn room_for_remote_join(
        &self,
        room_id: &str,
        version: &RoomVersion,
        creator: &str,
    ) -> Result<RoomRow> {
        if let Some(room) = self.store.room(room_id).await? {
            return Ok(room);
        }
        match self
            .store
            .create_room(room_id, version.id(), creator, false, now_millis())
            .await
        {
            Ok(_) => {}
            // Created meanwhile (an invite arriving): the row is the same room's.
            Err(err) if self.store.room(room_id).await?.is_some() => {
                tracing::debug!(%room_id, %err, "the room's row appeared while joining");
            }
            Err(err) => return Err(err.into()),
        }
        self.room(room_id).await
    }
}

//! Building a local event: prev events from the room's head, auth events by the spec's
//! selection, depth, hashes and signature (by the room version's signer), authorisation against
//! the current state, then [`Rooms::append`].

use std::collections::HashMap;

use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, Pdu,
    auth::{
        auth_types_for_event, check_against_auth_events, check_against_state,
        check_local_power_levels_content,
    },
    pdu::{EventSigner, build_pdu},
    version::{RedactionAlgorithm, RoomVersion},
};
use myelin_store::{
    CurrentStateChange, Delivery, EventStatus, Placement, RoomHead, RoomRow, TxnKey,
};
use ruma::UserId;
use serde_json::{Value, value::to_raw_value};

use super::{
    Rooms, append::Appending, pdu_of, push::PUSH_STATE_TYPES, to_canonical_object, version_of,
};
use crate::{Error, Result, now_millis};

/// The spec allows at most 20 `prev_events`.
const MAX_PREV_EVENTS: usize = 20;

/// What a client (or room creation) asks to send. Built only inside this crate: clients'
/// sends come in through [`Rooms::send_message`] and [`Rooms::send_state_event`], which take
/// membership events and redactions to their rules first.
#[derive(Debug, Clone)]
pub(crate) struct LocalEvent<'a> {
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub content: serde_json::Value,
    /// Which rule let the event through: `m.room.member` and `m.room.redaction` events must
    /// come with theirs, or [`Rooms::send`] refuses them.
    pub ruled: Ruled,
    /// The client's transaction, for idempotency.
    pub txn: Option<ClientTxn<'a>>,
}

/// What an event says of itself, before the room places it ([`Rooms::event_skeleton`]).
#[derive(Debug, Clone)]
pub(super) struct EventFields<'a> {
    pub event_type: &'a str,
    pub sender: &'a str,
    pub state_key: Option<&'a str>,
    pub content: CanonicalJsonObject,
}

/// The proof that an event went through the rule its type needs (see [`LocalEvent::ruled`]).
#[derive(Debug, Clone)]
pub(crate) enum Ruled {
    /// An event type no server-side rule covers beyond the auth rules.
    Plain,
    /// A membership event from [`Rooms::change_membership`].
    Membership(super::membership::MembershipRuled),
    /// A redaction from [`Rooms::redaction`]: the redacted event and its redacted form.
    Redaction(super::redact::RedactionRuled),
}

/// A client's transaction: the spec's retransmission is the same device, the same txn id and
/// the same HTTP path; `scope` is that path without its version prefix and txn id.
#[derive(Debug, Clone)]
pub(crate) struct ClientTxn<'a> {
    pub device_id: &'a str,
    pub txn_id: &'a str,
    pub scope: String,
}

impl ClientTxn<'_> {
    pub(crate) fn key<'k>(&'k self, user_id: &'k str) -> TxnKey<'k> {
        TxnKey {
            user_id,
            device_id: self.device_id,
            scope: &self.scope,
            txn_id: self.txn_id,
        }
    }
}

/// What became of a local event handed to [`Rooms::build_unappended`] (or `send`).
#[derive(Debug)]
pub(crate) enum Sent {
    /// Built, authorised and appended: its id.
    Appended(String),
    /// Nothing new was built: the event of a retried transaction, or the current state event
    /// the event would repeat.
    Existing(String),
    /// Built and authorised against the current state, not appended.
    Built(Box<BuiltEvent>),
}

/// A local event built and authorised, waiting for [`Rooms::append_built`].
#[derive(Debug)]
pub(crate) struct BuiltEvent {
    pub pdu: Pdu,
    /// The room's current state when it was built: the state at its prev events.
    state_before: Option<i64>,
    /// The event at its key in that state (clients' `prev_content`).
    replaces: Option<i64>,
    now: i64,
}

/// The transaction scope of `PUT /rooms/{roomId}/send/{eventType}/{txnId}`.
pub(crate) fn send_scope(room_id: &str, event_type: &str) -> String {
    format!("/rooms/{room_id}/send/{event_type}")
}

impl Rooms {
    /// Builds, authorises and persists an event from a local user. Returns the event id; a
    /// retried transaction returns the first send's id without sending again.
    pub(crate) async fn send(
        &self,
        room: &RoomRow,
        sender: &UserId,
        event: LocalEvent<'_>,
    ) -> Result<String> {
        match self.send_or_build(room, sender, event, true).await? {
            Sent::Appended(event_id) | Sent::Existing(event_id) => Ok(event_id),
            Sent::Built(_) => Err(Error::Internal(
                "a send that appends came back unappended".to_owned(),
            )),
        }
    }

    /// Builds and authorises an event from a local user as [`Rooms::send`] does, without
    /// appending it: for an event another server must sign first (an invite of one of its
    /// users), appended later by [`Rooms::append_built`]. The room's writer lock is not held
    /// in between.
    pub(crate) async fn build_unappended(
        &self,
        room: &RoomRow,
        sender: &UserId,
        event: LocalEvent<'_>,
    ) -> Result<Sent> {
        self.send_or_build(room, sender, event, false).await
    }

    /// A membership event for another server's user in an account-key room as it is first
    /// sent to that user's server (MSC4243.md §2.5): an invite (`/invite`) or a pre-emptive
    /// ban (`/ban`), the `target` named by account name (their key is not known here yet),
    /// placed on the room's head like any local event and signed by the sender's account key.
    /// The membership is `content`'s. The auth rules are not run on it (they want the key-form
    /// id the target's server puts in); [`Rooms::append_built`] runs them on the final event.
    pub(crate) async fn build_account_key_member(
        &self,
        room: &RoomRow,
        sender: &UserId,
        target: &str,
        content: Value,
    ) -> Result<Box<BuiltEvent>> {
        let version = version_of(room)?;
        let sender_id = self.room_user_id(version, sender).await?;
        let content_raw = to_raw_value(&content).map_err(|e| Error::BadJson(e.to_string()))?;
        let auth_types = auth_types_for_event(
            version,
            "m.room.member",
            &sender_id,
            Some(target),
            &content_raw,
        )
        .map_err(auth_error)?;
        let mut keys = auth_types.clone();
        let create = ("m.room.create".to_owned(), String::new());
        if !keys.contains(&create) {
            keys.push(create);
        }
        let context = self.store.send_context(room.room_nid, &keys, None).await?;
        let by_key = state_by_key(version, &context.state)?;
        let auth_refs = auth_references(version, &auth_types, &by_key)?;
        let now = now_millis();
        let mut partial = self
            .event_skeleton(
                version,
                room,
                EventFields {
                    event_type: "m.room.member",
                    sender: &sender_id,
                    state_key: Some(target),
                    content: to_canonical_object(content)?,
                },
                auth_refs,
                &context.head,
                now,
            )
            .await?;
        self.assign_event_id(&mut partial, version);
        let pair = self.account_keys.signing_key(sender.localpart()).await?;
        let pdu = build_pdu(partial, version, EventSigner::Account(&pair)).map_err(pdu_error)?;
        Ok(Box::new(BuiltEvent {
            pdu,
            state_before: context.head.current_state_group,
            replaces: None,
            now,
        }))
    }

    /// `built` with its final form `pdu` (an account-key invite or ban the target's server gave
    /// its key-form state key), and the event it replaces at that key in the current state.
    pub(crate) async fn with_final_pdu(
        &self,
        room: &RoomRow,
        mut built: Box<BuiltEvent>,
        pdu: Pdu,
    ) -> Result<Box<BuiltEvent>> {
        if let Some(key) = pdu.state_key() {
            built.replaces = self
                .store
                .current_state(
                    room.room_nid,
                    Some(&[(pdu.event_type().to_owned(), key.to_owned())]),
                )
                .await?
                .first()
                .map(|row| row.event_nid);
        }
        built.pdu = pdu;
        Ok(built)
    }

    /// Appends an event built by [`Rooms::build_unappended`] (perhaps changed since only by
    /// signatures other servers added), under the room's writer lock. The room may have moved
    /// on since it was built: its prev events stay as built (the event may make a fork, which
    /// `append` resolves), and it must still be authorised by the room's current state.
    pub(crate) async fn append_built(
        &self,
        room: &RoomRow,
        built: Box<BuiltEvent>,
    ) -> Result<String> {
        let version = version_of(room)?;
        let pdu = &built.pdu;
        let writing = self.locks.writer(&room.room_id).await;
        let auth_types = auth_types_for_event(
            version,
            pdu.event_type(),
            pdu.sender(),
            pdu.state_key(),
            pdu.content(),
        )
        .map_err(auth_error)?;
        // The create event too: rooms from v12 cite it through their id, not `auth_events`.
        let mut keys = auth_types;
        let create = ("m.room.create".to_owned(), String::new());
        if !keys.contains(&create) {
            keys.push(create);
        }
        let state = self.store.current_state(room.room_nid, Some(&keys)).await?;
        let mut by_key: HashMap<(String, String), Pdu> = HashMap::new();
        for row in &state {
            by_key.insert(
                (
                    row.event_type.clone(),
                    row.state_key.clone().unwrap_or_default(),
                ),
                pdu_of(row, version)?,
            );
        }
        check_against_state(version, pdu, |kind, key| {
            by_key.get(&(kind.to_owned(), key.to_owned()))
        })
        .map_err(auth_error)?;
        self.append(Appending {
            room,
            pdu,
            status: EventStatus::Normal,
            placement: Placement::Live,
            state_before: built.state_before,
            replaces: built.replaces,
            // `append` decides: the event extends the current state if nothing moved, else
            // the forks are resolved.
            current_state: None,
            txn: None,
            redaction: None,
            redaction_waits: None,
            redacted_by: None,
            now: built.now,
            push_inputs: None,
            writing: Some(writing),
            // Another server had the event before it is stored here.
            just_built: false,
            delivery: Delivery::BySender,
        })
        .await
    }

    /// [`Rooms::send`], and with `append` false [`Rooms::build_unappended`].
    async fn send_or_build(
        &self,
        room: &RoomRow,
        sender: &UserId,
        mut event: LocalEvent<'_>,
        append: bool,
    ) -> Result<Sent> {
        if !self.is_local(sender) {
            return Err(Error::Internal(
                "local sends come from local users".to_owned(),
            ));
        }
        let redaction = match (event.event_type, &event.ruled) {
            ("m.room.member", Ruled::Membership(_)) => None,
            ("m.room.redaction", Ruled::Redaction(ruled)) => Some(ruled),
            ("m.room.member" | "m.room.redaction", _) => {
                return Err(Error::Internal(format!(
                    "a {} event reached send without its rule",
                    event.event_type
                )));
            }
            _ => None,
        };
        // Power levels of a shape only older room versions' auth rules would take: the
        // client's bad request (400), before anything is built or locked.
        if event.event_type == "m.room.power_levels" && event.state_key.is_some() {
            check_local_power_levels_content(&to_canonical_object(event.content.clone())?)
                .map_err(auth_error)?;
        }
        // Held until the event's commit has ended (or it is known never to happen): it moves
        // into the store's group commit with the event (see `persist`), so a send whose
        // caller goes away never commits outside its room's lock.
        let version = version_of(room)?;
        // In account-key rooms the sender is its key-form id and the users the client named by
        // account name are translated to keys (MSC4243.md Q2-Q5) before anything is built or
        // locked; what cannot be translated is refused, nothing written.
        refuse_third_party_invite_state(version, event.event_type)?;
        let sender_id = self.room_user_id(version, sender).await?;
        let translated_state_key;
        if version.uses_account_keys() {
            translated_state_key = match event.state_key {
                Some(key)
                    if key.starts_with('@')
                        && (event.event_type == "m.room.member" || key == sender.as_str()) =>
                {
                    Some(self.key_form_in_room(room, key).await?)
                }
                other => other.map(str::to_owned),
            };
            self.translate_content(room, event.event_type, &mut event.content)
                .await?;
        } else {
            translated_state_key = event.state_key.map(str::to_owned);
        }
        let state_key = translated_state_key.as_deref();
        let account_key = if version.uses_account_keys() {
            Some(self.account_keys.signing_key(sender.localpart()).await?)
        } else {
            None
        };
        let writing = self.locks.writer(&room.room_id).await;
        let content_raw =
            to_raw_value(&event.content).map_err(|e| Error::BadJson(e.to_string()))?;
        let auth_types = auth_types_for_event(
            version,
            event.event_type,
            &sender_id,
            state_key,
            &content_raw,
        )
        .map_err(auth_error)?;

        // Only the state the auth rules look at is loaded: the selected auth types and the
        // create event (which v12 rooms cite through the room id), plus the power levels that
        // push rules read; with the room's head and a retried transaction, in one read.
        let mut keys: Vec<(String, String)> = auth_types.clone();
        for kind in PUSH_STATE_TYPES {
            if !keys.iter().any(|(t, k)| t == kind && k.is_empty()) {
                keys.push((kind.to_owned(), String::new()));
            }
        }
        // The state this event would replace, to recognise a repeat of it (below).
        let own_key = state_key.map(|key| (event.event_type.to_owned(), key.to_owned()));
        if let Some(own) = &own_key
            && !keys.contains(own)
        {
            keys.push(own.clone());
        }
        // The members push rules are evaluated for, read alongside on another connection.
        let (context, members) = tokio::try_join!(
            self.store.send_context(
                room.room_nid,
                &keys,
                event.txn.as_ref().map(|txn| txn.key(sender.as_str())),
            ),
            self.store
                .joined_member_events(room.room_nid, super::push::PUSH_RULES_TYPE),
        )?;
        if let Some(event_id) = context.txn_event_id {
            return Ok(Sent::Existing(event_id));
        }
        // Setting state to what it already is, by the same sender (a second identical
        // `PUT /state`, a join while joined with the same profile), changes nothing: the
        // current event is the answer and no new event is sent, as other servers do.
        if let Some((kind, key)) = &own_key
            && let Some(current) = context
                .state
                .iter()
                .find(|row| &row.event_type == kind && row.state_key.as_deref() == Some(key))
            && current.sender == sender_id
            && current.redacted_by.is_none()
            && serde_json::from_str::<Value>(&current.json)
                .is_ok_and(|stored| stored["content"] == event.content)
        {
            return Ok(Sent::Existing(current.event_id.clone()));
        }
        let by_key = state_by_key(version, &context.state)?;
        let auth_refs = auth_references(version, &auth_types, &by_key)?;

        let head = context.head;
        let now = now_millis();
        let mut partial = self
            .event_skeleton(
                version,
                room,
                EventFields {
                    event_type: event.event_type,
                    sender: &sender_id,
                    state_key,
                    content: to_canonical_object(event.content.clone())?,
                },
                auth_refs,
                &head,
                now,
            )
            .await?;
        if let Some(redacts) = redaction.map(|r| r.redacts())
            && version.redaction() != RedactionAlgorithm::V11
        {
            // Before v11 `redacts` is a top-level key.
            partial.insert(
                "redacts".to_owned(),
                CanonicalJsonValue::String(redacts.to_owned()),
            );
        }
        self.assign_event_id(&mut partial, version);
        // Account-key rooms: signed by the sender's account key, never the server key.
        let signer = match &account_key {
            Some(pair) => EventSigner::Account(pair),
            None => self.keys.event_signer(),
        };
        let mut pdu = build_pdu(partial, version, signer).map_err(pdu_error)?;
        drop(account_key);
        // A restricted join in an account-key room is co-signed by the authorising user's
        // account key (MSC4243.md §2.2 item 12); that user is one of ours (we chose it).
        if version.uses_account_keys()
            && event.event_type == "m.room.member"
            && let Some(authoriser) = event.content["join_authorised_via_users_server"].as_str()
            && let Ok(authoriser) = myelin_room_version::KeyFormUserId::parse(authoriser)
            && let myelin_room_version::KeyVerification::Local { account_name } =
                self.account_keys.lookup(&authoriser)
        {
            let pair = self.account_keys.signing_key(&account_name).await?;
            myelin_room_version::pdu::add_signature(&mut pdu, version, EventSigner::Account(&pair))
                .map_err(pdu_error)?;
        }
        let by_id: HashMap<&str, &Pdu> = by_key.values().map(|pdu| (pdu.event_id(), pdu)).collect();
        check_against_auth_events(version, &pdu, |id| by_id.get(id).copied())
            .map_err(auth_error)?;

        // What the event replaces in the state before it (the current state): clients'
        // `prev_content`.
        let replaces = own_key.as_ref().and_then(|(kind, key)| {
            context
                .state
                .iter()
                .find(|row| &row.event_type == kind && row.state_key.as_deref() == Some(key))
                .map(|row| row.event_nid)
        });
        // Citing every extremity, on the current state, the event is the room's new end and its
        // state the current state; past the cap, `append` resolves it with those left.
        let cites_all = head.prev_event_ids.len() <= MAX_PREV_EVENTS;
        if !append {
            return Ok(Sent::Built(Box::new(BuiltEvent {
                pdu,
                state_before: head.current_state_group,
                replaces,
                now,
            })));
        }
        self.append(Appending {
            room,
            pdu: &pdu,
            status: EventStatus::Normal,
            placement: Placement::Live,
            state_before: head.current_state_group,
            replaces,
            current_state: cites_all.then_some(CurrentStateChange::Extend),
            txn: event.txn.as_ref().map(|txn| txn.key(sender.as_str())),
            redaction: redaction.and_then(|r| r.redacted_copy()),
            redaction_waits: redaction.and_then(|r| r.waits()),
            redacted_by: None,
            now,
            push_inputs: Some((members, &context.state)),
            writing: Some(writing),
            just_built: true,
            delivery: Delivery::BySender,
        })
        .await
        .map(Sent::Appended)
    }

    /// The fields every event this server builds for a room shares with every other: its
    /// type, room, sender, state key and content, `prev_events` from the room's head (its
    /// forward extremities, up to the spec's 20), the `auth_events` given (chosen by the spec's
    /// selection, [`auth_types_for_event`], from the current state), `depth` one past the
    /// deepest extremity, and `origin_server_ts` = `now`. Local sends complete it into a PDU;
    /// the resident's `make_join`/`make_leave`/`make_knock` templates are it as it is.
    pub(super) async fn event_skeleton(
        &self,
        version: &RoomVersion,
        room: &RoomRow,
        fields: EventFields<'_>,
        auth_refs: Vec<CanonicalJsonValue>,
        head: &RoomHead,
        now: i64,
    ) -> Result<CanonicalJsonObject> {
        let mut partial = CanonicalJsonObject::new();
        partial.insert(
            "type".to_owned(),
            CanonicalJsonValue::String(fields.event_type.to_owned()),
        );
        partial.insert(
            "room_id".to_owned(),
            CanonicalJsonValue::String(room.room_id.clone()),
        );
        partial.insert(
            "sender".to_owned(),
            CanonicalJsonValue::String(fields.sender.to_owned()),
        );
        partial.insert(
            "content".to_owned(),
            CanonicalJsonValue::Object(fields.content),
        );
        if let Some(state_key) = fields.state_key {
            partial.insert(
                "state_key".to_owned(),
                CanonicalJsonValue::String(state_key.to_owned()),
            );
        }
        let prev_refs = self
            .references(
                version,
                &head.prev_event_ids[..head.prev_event_ids.len().min(MAX_PREV_EVENTS)],
            )
            .await?;
        partial.insert(
            "prev_events".to_owned(),
            CanonicalJsonValue::Array(prev_refs),
        );
        partial.insert(
            "auth_events".to_owned(),
            CanonicalJsonValue::Array(auth_refs),
        );
        partial.insert(
            "depth".to_owned(),
            CanonicalJsonValue::Integer(super::int(head.max_depth + 1)?),
        );
        partial.insert(
            "origin_server_ts".to_owned(),
            CanonicalJsonValue::Integer(super::int(now)?),
        );
        Ok(partial)
    }

    /// A user a client named, in key form, in the context of `room` (MSC4243.md Q3): what
    /// [`AccountKeys::to_key_form`](crate::account_keys::AccountKeys::to_key_form) knows, or
    /// else a remote account name matched against the room's members whose keys are verified
    /// under that name on that domain (of several, the most recent membership; logged). No
    /// match is `M_INVALID_PARAM`: never a guess.
    pub(crate) async fn key_form_in_room(&self, room: &RoomRow, user_id: &str) -> Result<String> {
        let err = match self.account_keys.to_key_form(user_id).await {
            Ok(key_form) => return Ok(key_form),
            Err(err @ Error::InvalidParam(_)) => err,
            Err(other) => return Err(other),
        };
        let Some((name, domain)) = user_id
            .strip_prefix('@')
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(err);
        };
        if domain == self.server_name.as_str() {
            return Err(err);
        }
        let members = self.store.current_state(room.room_nid, None).await?;
        let mut matches: Vec<(i64, String)> = members
            .iter()
            .filter(|row| row.event_type == "m.room.member")
            .filter_map(|row| {
                let key_form =
                    myelin_room_version::KeyFormUserId::parse(row.state_key.as_deref()?).ok()?;
                (key_form.server_name == domain
                    && matches!(
                        self.account_keys.lookup(&key_form),
                        myelin_room_version::KeyVerification::Verified { account_name }
                            if account_name == name
                    ))
                .then(|| (row.stream_ordering, key_form.to_string()))
            })
            .collect();
        matches.sort();
        if matches.len() > 1 {
            tracing::info!(%user_id, keys = matches.len(), "several members verified under one name; the most recent membership wins");
        }
        matches.pop().map(|(_, key_form)| key_form).ok_or(err)
    }

    /// Account-key rooms: the users of power levels a client sent, in key form (MSC4243.md
    /// Q5). A key-form id the room's power levels hold already (`present`) stays as it is
    /// (clients get unverified keys in key form and send them back); others are translated,
    /// in `room` when it exists (a remote name verified there), else by the account keys
    /// known here.
    pub(super) async fn key_form_power_users(
        &self,
        room: Option<&RoomRow>,
        users: serde_json::Map<String, Value>,
        present: &[String],
    ) -> Result<serde_json::Map<String, Value>> {
        let mut translated = serde_json::Map::new();
        for (user, level) in users {
            let key_form = if present.contains(&user)
                && myelin_room_version::KeyFormUserId::parse(&user).is_ok()
            {
                user
            } else {
                match room {
                    Some(room) => self.key_form_in_room(room, &user).await?,
                    None => self.account_keys.to_key_form(&user).await?,
                }
            };
            translated.insert(key_form, level);
        }
        Ok(translated)
    }

    /// Account-key rooms: user ids a client names in content, in key form (MSC4243.md Q5):
    /// `join_authorised_via_users_server` of a member event and the keys of
    /// `m.room.power_levels`' `users`. A key-form id already in the room's power levels stays
    /// as it is (clients get unverified keys in key form and send them back).
    async fn translate_content(
        &self,
        room: &RoomRow,
        event_type: &str,
        content: &mut Value,
    ) -> Result<()> {
        let Some(object) = content.as_object_mut() else {
            return Ok(());
        };
        match event_type {
            "m.room.member" => {
                if let Some(Value::String(authoriser)) =
                    object.get("join_authorised_via_users_server").cloned()
                {
                    object.insert(
                        "join_authorised_via_users_server".to_owned(),
                        Value::String(self.account_keys.to_key_form(&authoriser).await?),
                    );
                }
            }
            "m.room.power_levels" => {
                let Some(Value::Object(users)) = object.get("users").cloned() else {
                    return Ok(());
                };
                let current = self
                    .store
                    .current_state(
                        room.room_nid,
                        Some(&[("m.room.power_levels".to_owned(), String::new())]),
                    )
                    .await?;
                let present: Vec<String> = current
                    .iter()
                    .filter_map(|row| serde_json::from_str::<Value>(&row.json).ok())
                    .filter_map(|json| json["content"]["users"].as_object().cloned())
                    .flat_map(|users| users.keys().cloned().collect::<Vec<_>>())
                    .collect();
                let translated = self
                    .key_form_power_users(Some(room), users, &present)
                    .await?;
                object.insert("users".to_owned(), Value::Object(translated));
            }
            _ => {}
        }
        Ok(())
    }

    /// How a new event cites `event_ids` in `prev_events`: the ids themselves, or in rooms 1
    /// and 2 (event format 1) `[id, {"sha256": reference hash}]` pairs, which need the events.
    async fn references(
        &self,
        version: &RoomVersion,
        event_ids: &[String],
    ) -> Result<Vec<CanonicalJsonValue>> {
        let mut references = Vec::with_capacity(event_ids.len());
        for event_id in event_ids {
            if !version.event_ids_in_pdu() {
                references.push(CanonicalJsonValue::String(event_id.clone()));
                continue;
            }
            let row = self.store.event(event_id).await?.ok_or_else(|| {
                Error::Internal(format!("the room's head {event_id} is not stored"))
            })?;
            references.push(
                pdu_of(&row, version)?
                    .reference(version)
                    .map_err(pdu_error)?,
            );
        }
        Ok(references)
    }

    /// In rooms 1 and 2 (event format 1) an event carries its id, `$<opaque>:<origin>`, chosen
    /// by the server that builds it; later formats derive the id from the event's hash.
    pub(super) fn assign_event_id(&self, partial: &mut CanonicalJsonObject, version: &RoomVersion) {
        if version.event_ids_in_pdu() {
            let opaque = crate::tokens::random_from(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                18,
            );
            partial.insert(
                "event_id".to_owned(),
                CanonicalJsonValue::String(format!("${opaque}:{}", self.server_name)),
            );
        }
    }
}

/// State events (rows of the current state) as PDUs by `(type, state key)`.
pub(super) fn state_by_key(
    version: &RoomVersion,
    rows: &[myelin_store::EventRow],
) -> Result<HashMap<(String, String), Pdu>> {
    rows.iter()
        .map(|row| {
            Ok((
                (
                    row.event_type.clone(),
                    row.state_key.clone().unwrap_or_default(),
                ),
                pdu_of(row, version)?,
            ))
        })
        .collect()
}

/// An event's `auth_events`: how it cites the state at the keys the spec's selection chose
/// (`auth_types`, from [`auth_types_for_event`]), those the state has.
pub(super) fn auth_references(
    version: &RoomVersion,
    auth_types: &[(String, String)],
    by_key: &HashMap<(String, String), Pdu>,
) -> Result<Vec<CanonicalJsonValue>> {
    auth_types
        .iter()
        .filter_map(|key| by_key.get(key))
        .map(|pdu| pdu.reference(version))
        .collect::<Result<Vec<_>, _>>()
        .map_err(pdu_error)
}

/// A local event the auth rules refuse: a malformed one (no sender could send it) is the
/// client's bad request, any other a permission the sender lacks.
pub(super) fn auth_error(err: myelin_room_version::AuthError) -> Error {
    if err.malformed {
        Error::BadJson(err.to_string())
    } else {
        Error::Forbidden(err.to_string())
    }
}

/// A PDU that cannot be built is the client's fault (too large, bad fields) or ours.
pub(super) fn pdu_error(err: myelin_room_version::PduError) -> Error {
    match err.errcode() {
        "M_TOO_LARGE" => Error::TooLarge(err.to_string()),
        "M_BAD_JSON" | "M_NOT_JSON" | "M_INVALID_PARAM" => Error::BadJson(err.to_string()),
        _ => Error::Internal(format!("building an event: {err}")),
    }
}

/// Account-key rooms take no `m.room.third_party_invite`: identity servers sign account-name
/// ids, but the member state key must be the key form, so such an invite could never be
/// accepted (MSC4243.md Q10).
pub(super) fn refuse_third_party_invite_state(
    version: &RoomVersion,
    event_type: &str,
) -> Result<()> {
    if version.uses_account_keys() && event_type == "m.room.third_party_invite" {
        return Err(Error::Forbidden(
            "Third-party invites are disabled in account-key rooms".to_owned(),
        ));
    }
    Ok(())
}

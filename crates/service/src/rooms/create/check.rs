//! A room's build checked whole before anything of it is written: every event the build would
//! send after its create event is built in memory, in the build's order, and authorised by the
//! room version's rules against the state the events before it make, with the server-side
//! rules each step's live path applies ([`Rooms::send_state_of`], [`Rooms::change_membership`],
//! the canonical alias check). A request one of whose steps would be refused is refused whole,
//! with that step's error, and leaves nothing behind (no room, no event, no journal entry, no
//! alias, no directory entry).
//!
//! What cannot be checked here is what another server decides: an invite of a remote user
//! (from `invite`), which the invitee's server signs during the build, is left out; its refusal
//! leaves that user uninvited, as before. `initial_state` membership events that would need
//! another server during the build (an invite of a remote user, a ban of one whose account key
//! is unknown) are refused up front.

use std::collections::HashMap;

use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, Pdu, RoomVersion,
    auth::{auth_types_for_event, check_against_auth_events, check_local_power_levels_content},
    pdu::{EventSigner, build_pdu},
};
use ruma::{RoomAliasId, UserId};
use serde_json::{Value, json, value::to_raw_value};

use super::{RoomCreation, Step};
use crate::{
    Error, Result,
    rooms::{
        Rooms,
        append::StateKey,
        client_send,
        events::{self, auth_error, auth_references, pdu_error},
        membership, to_canonical_object,
    },
};

/// The room as the simulated build has made it so far.
struct Simulated<'a> {
    version: &'static RoomVersion,
    room_id: &'a str,
    /// The creator as the room names them (key form in account-key rooms).
    sender: &'a str,
    signer: EventSigner<'a>,
    state: HashMap<StateKey, Pdu>,
    last: Pdu,
    depth: u64,
    now: i64,
}

impl Simulated<'_> {
    /// Builds the creator's state event on the state so far, authorises it as a local send is
    /// authorised (against its own auth events, chosen by the spec's selection from that
    /// state), and makes it part of the state. A repeat of the current event at its key (same
    /// sender, same content) sends nothing, as a live send does.
    fn send(
        &mut self,
        rooms: &Rooms,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> Result<()> {
        let key = (event_type.to_owned(), state_key.to_owned());
        if let Some(current) = self.state.get(&key)
            && current.sender() == self.sender
            && serde_json::from_str::<Value>(current.content().get())
                .is_ok_and(|stored| stored == content)
        {
            return Ok(());
        }
        if event_type == "m.room.power_levels" {
            check_local_power_levels_content(&to_canonical_object(content.clone())?)
                .map_err(auth_error)?;
        }
        let content_raw = to_raw_value(&content).map_err(|e| Error::BadJson(e.to_string()))?;
        let auth_types = auth_types_for_event(
            self.version,
            event_type,
            self.sender,
            Some(state_key),
            &content_raw,
        )
        .map_err(auth_error)?;
        let auth_refs = auth_references(self.version, &auth_types, &self.state)?;
        let mut partial = CanonicalJsonObject::new();
        let text = |s: &str| CanonicalJsonValue::String(s.to_owned());
        partial.insert("type".to_owned(), text(event_type));
        partial.insert("room_id".to_owned(), text(self.room_id));
        partial.insert("sender".to_owned(), text(self.sender));
        partial.insert("state_key".to_owned(), text(state_key));
        partial.insert(
            "content".to_owned(),
            CanonicalJsonValue::Object(to_canonical_object(content)?),
        );
        partial.insert(
            "prev_events".to_owned(),
            CanonicalJsonValue::Array(vec![self.last.reference(self.version).map_err(pdu_error)?]),
        );
        partial.insert(
            "auth_events".to_owned(),
            CanonicalJsonValue::Array(auth_refs),
        );
        self.depth += 1;
        partial.insert(
            "depth".to_owned(),
            CanonicalJsonValue::Integer(
                self.depth
                    .try_into()
                    .map_err(|_| Error::Internal("a new room's depth overflowed".to_owned()))?,
            ),
        );
        partial.insert(
            "origin_server_ts".to_owned(),
            CanonicalJsonValue::Integer(crate::rooms::int(self.now)?),
        );
        rooms.assign_event_id(&mut partial, self.version);
        let pdu = build_pdu(partial, self.version, self.signer).map_err(pdu_error)?;
        {
            let by_id: HashMap<&str, &Pdu> = self
                .state
                .values()
                .map(|event| (event.event_id(), event))
                .collect();
            check_against_auth_events(self.version, &pdu, |id| by_id.get(id).copied())
                .map_err(auth_error)?;
        }
        self.state.insert(key, pdu.clone());
        self.last = pdu;
        Ok(())
    }

    /// The membership of `member` (as the room names them) in the state so far.
    fn membership(&self, member: &str) -> Option<String> {
        let event = self
            .state
            .get(&("m.room.member".to_owned(), member.to_owned()))?;
        serde_json::from_str::<Value>(event.content().get())
            .ok()?
            .get("membership")?
            .as_str()
            .map(str::to_owned)
    }

    /// The user ids of the power levels' `users` so far.
    fn power_users(&self) -> Vec<String> {
        self.state
            .get(&("m.room.power_levels".to_owned(), String::new()))
            .and_then(|event| serde_json::from_str::<Value>(event.content().get()).ok())
            .and_then(|content| content["users"].as_object().cloned())
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl Rooms {
    /// Runs the build of `creation` after its `create` event in memory and refuses it, with
    /// the error the first refused step would get, if any step would be refused (see the
    /// module's documentation). `sender` is the creator as the room names them; `signer`
    /// signs the creator's events.
    pub(super) async fn check_build(
        &self,
        version: &'static RoomVersion,
        create: &Pdu,
        creation: &RoomCreation,
        sender: &str,
        signer: EventSigner<'_>,
    ) -> Result<()> {
        let mut room = Simulated {
            version,
            room_id: &creation.room_id,
            sender,
            signer,
            state: HashMap::from([(("m.room.create".to_owned(), String::new()), create.clone())]),
            last: create.clone(),
            depth: 1,
            now: creation.now,
        };
        let creator: &UserId = &creation.creator;
        for step in creation.steps() {
            match step {
                Step::Join => {
                    let content = self.join_content(creator, None).await?;
                    room.send(self, "m.room.member", sender, content)?;
                }
                Step::State(event_type, state_key, content) => {
                    self.check_state_step(&mut room, creation, &event_type, &state_key, content)
                        .await?;
                }
                // Written with the room row, in its transaction (a taken alias refuses both).
                Step::Alias(_) => {}
                Step::Invite(invitee) if self.is_local(invitee) => {
                    let mut content = json!({"membership": "invite"});
                    if creation.is_direct {
                        content["is_direct"] = json!(true);
                    }
                    let member = self.member_key(version, invitee).await?;
                    room.send(self, "m.room.member", &member, content)?;
                }
                // The invitee's server answers for its user during the build.
                Step::Invite(_) => {}
            }
        }
        Ok(())
    }

    /// How the room names `user` in member state keys: key form in account-key rooms.
    async fn member_key(&self, version: &RoomVersion, user: &UserId) -> Result<String> {
        if version.uses_account_keys() {
            self.account_keys.to_key_form(user.as_str()).await
        } else {
            Ok(user.to_string())
        }
    }

    /// A state step of the build (`initial_state`, the preset's rules, name, topic, the power
    /// levels and canonical alias), with the rules [`Rooms::send_state_of`] applies on its way
    /// to the auth rules.
    async fn check_state_step(
        &self,
        room: &mut Simulated<'_>,
        creation: &RoomCreation,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> Result<()> {
        let version = room.version;
        match event_type {
            "m.room.redaction" => Err(client_send::redaction_as_state()),
            "m.room.member" => {
                self.check_member_step(room, creation, state_key, content)
                    .await
            }
            _ => {
                events::refuse_third_party_invite_state(version, event_type)?;
                let mut content = content;
                if event_type == "m.room.canonical_alias" {
                    check_canonical_alias(creation, &content)?;
                }
                let mut state_key = state_key.to_owned();
                if version.uses_account_keys() {
                    // As a live send translates them: a state key that is the sender's name,
                    // and the power levels' users.
                    if state_key == creation.creator.as_str() {
                        state_key = room.sender.to_owned();
                    }
                    if event_type == "m.room.power_levels"
                        && let Some(Value::Object(users)) = content.get("users").cloned()
                    {
                        let present = room.power_users();
                        let translated = self.key_form_power_users(None, users, &present).await?;
                        content["users"] = Value::Object(translated);
                    }
                }
                room.send(self, event_type, &state_key, content)
            }
        }
    }

    /// An `initial_state` membership event, with [`Rooms::change_membership`]'s rules: the
    /// creator's own membership, a ban, a kick of someone the build put in the room, or an
    /// invite of a local user (whose invite rules are asked). An invite of another server's
    /// user is refused: that server signs it during the build, after the room exists, so it
    /// goes in `invite`, where its refusal leaves the user uninvited instead of failing.
    async fn check_member_step(
        &self,
        room: &mut Simulated<'_>,
        creation: &RoomCreation,
        state_key: &str,
        content: Value,
    ) -> Result<()> {
        let target = UserId::parse(state_key).map_err(|e| {
            Error::BadJson(format!("The state key of m.room.member is a user id: {e}"))
        })?;
        let (content, membership) = membership::client_member_content(content)?;
        let creator: &UserId = &creation.creator;
        match membership.as_str() {
            "invite" if !self.is_local(&target) => {
                return Err(Error::InvalidParam(format!(
                    "{target} is another server's user: invite them with `invite`, not `initial_state`"
                )));
            }
            "invite" => self.refuse_blocked_invite(&target, creator).await?,
            "join" | "ban" | "knock" | "leave" => {}
            other => return Err(Error::BadJson(format!("Unknown membership {other:?}"))),
        }
        let member = self.member_key(room.version, &target).await?;
        if membership == "leave" {
            membership::check_leave_target(creator, &target, room.membership(&member).as_deref())?;
        }
        room.send(self, "m.room.member", &member, Value::Object(content))
    }
}

/// The canonical alias a new room's build sends: each alias it names must point at the room
/// (as [`crate::directory::Directory::check_canonical_alias`] requires of any client's), and at
/// creation the only one that will is the build's own (`room_alias_name`).
fn check_canonical_alias(creation: &RoomCreation, content: &Value) -> Result<()> {
    let mut aliases = Vec::new();
    match &content["alias"] {
        Value::Null => {}
        Value::String(alias) => aliases.push(alias.as_str()),
        _ => return Err(Error::InvalidParam("`alias` must be a string".to_owned())),
    }
    match &content["alt_aliases"] {
        Value::Null => {}
        Value::Array(list) => {
            for alias in list {
                aliases.push(alias.as_str().ok_or_else(|| {
                    Error::InvalidParam("`alt_aliases` must hold strings".to_owned())
                })?);
            }
        }
        _ => {
            return Err(Error::InvalidParam(
                "`alt_aliases` must be a list".to_owned(),
            ));
        }
    }
    for alias in aliases {
        let parsed = RoomAliasId::parse(alias)
            .map_err(|e| Error::InvalidParam(format!("Invalid room alias {alias:?}: {e}")))?;
        if creation.alias.as_deref() != Some(&*parsed) {
            return Err(Error::BadAlias(format!(
                "Room alias {alias} does not point to this room"
            )));
        }
    }
    Ok(())
}

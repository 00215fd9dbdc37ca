//! `createRoom`: the create event (whose hash is the room id from v12 on), the creator's join,
//! power levels, the alias and canonical alias (`room_alias_name`), the preset's join rules,
//! history visibility and guest access, `initial_state`, name, topic, and invites, in the spec's
//! order. [`Rooms::build_room`] sends them; room upgrades build their replacement room with it
//! too.
//!
//! Before anything is written the whole build is run in memory and authorised step by step
//! ([`check`]): a request one of whose steps the room's rules (or the server's) would refuse
//! is refused whole and leaves nothing behind.
//!
//! A build takes a transaction per event, so it is journaled (`crate::operations`) with the
//! room row (and the alias), in one transaction: a build that a crash (or a failure of this
//! server's) cuts short is finished later by [`Rooms::resume_room_creation`], never left
//! half-made. Finishing rather than undoing, because what was built is already seen: the
//! creator's other devices sync the room as its events are written.

mod check;

use std::collections::HashMap;

use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, Pdu, RoomVersion,
    auth::check_auth_events,
    pdu::{EventSigner, build_pdu},
    version::{EventFormat, RoomIdFormat, Stability},
};
use myelin_store::{Delivery, RoomRow};
use ruma::{OwnedRoomAliasId, OwnedUserId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    Rooms,
    append::StateKey,
    events::{auth_error, pdu_error},
    to_canonical_object, version_of,
};
use crate::{
    Error, Result, now_millis,
    operations::{CREATE_ROOM, crash_point},
    tokens,
};

/// The spec's presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    PrivateChat,
    PublicChat,
    TrustedPrivateChat,
}

/// A `createRoom` request, already parsed.
#[derive(Debug, Clone, Default)]
pub struct CreateRoom {
    pub room_version: Option<String>,
    pub preset: Option<Preset>,
    pub public: bool,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    /// `(type, state_key, content)`.
    pub initial_state: Vec<(String, String, Value)>,
    pub creation_content: Option<serde_json::Map<String, Value>>,
    pub power_level_content_override: Option<serde_json::Map<String, Value>>,
    /// A local alias for the room (from `room_alias_name`), also its canonical alias.
    pub alias: Option<OwnedRoomAliasId>,
}

/// A room about to be built: everything [`Rooms::build_room`] sends, decided by its caller
/// (`createRoom` from the request and its preset, a room upgrade from the old room).
#[derive(Debug)]
pub(super) struct NewRoom {
    pub version: &'static RoomVersion,
    /// Published in the room directory from the start.
    pub public: bool,
    /// The create event's content, less `room_version` (and `creator` before v11), set here.
    pub creation_content: serde_json::Map<String, Value>,
    /// The whole content of the first power levels event.
    pub power_levels: serde_json::Map<String, Value>,
    pub alias: Option<OwnedRoomAliasId>,
    /// The preset whose join rules, history visibility and guest access are sent; `None` sends
    /// none of them (a room upgrade copies them in `initial_state`).
    pub preset: Option<Preset>,
    pub initial_state: Vec<(String, String, Value)>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
}

/// What building a room needs from its first write on: journaled with the room row (kind
/// `create_room`), so that a build a crash cuts short is finished ([`Rooms::resume_room_creation`]).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RoomCreation {
    room_id: String,
    creator: OwnedUserId,
    create_event_id: String,
    /// The create event as built and signed (from v12 on, the room id is its hash).
    create_event: String,
    power_levels: serde_json::Map<String, Value>,
    alias: Option<OwnedRoomAliasId>,
    preset: Option<Preset>,
    initial_state: Vec<(String, String, Value)>,
    name: Option<String>,
    topic: Option<String>,
    invite: Vec<OwnedUserId>,
    is_direct: bool,
    /// The create event's time.
    now: i64,
}

/// One step of a room's build after its create event.
#[derive(Debug)]
enum Step<'a> {
    /// The creator joins (with their profile as it is then).
    Join,
    /// A state event from the creator: `(type, state_key, content)`.
    State(String, String, Value),
    /// The alias points at the room.
    Alias(&'a OwnedRoomAliasId),
    Invite(&'a OwnedUserId),
}

impl RoomCreation {
    /// The steps after the create event, in the spec's `createRoom` order.
    fn steps(&self) -> Vec<Step<'_>> {
        let state = |event_type: &str, content: Value| {
            Step::State(event_type.to_owned(), String::new(), content)
        };
        let mut steps = vec![
            Step::Join,
            // Power levels (checked before anything was written).
            state(
                "m.room.power_levels",
                Value::Object(self.power_levels.clone()),
            ),
        ];
        // The alias, then the canonical alias naming it.
        if let Some(alias) = &self.alias {
            steps.push(Step::Alias(alias));
            steps.push(state("m.room.canonical_alias", json!({"alias": alias})));
        }
        // The preset's rules.
        if let Some(preset) = self.preset {
            let join_rule = if preset == Preset::PublicChat {
                "public"
            } else {
                "invite"
            };
            steps.push(state("m.room.join_rules", json!({"join_rule": join_rule})));
            steps.push(state(
                "m.room.history_visibility",
                json!({"history_visibility": "shared"}),
            ));
            if preset != Preset::PublicChat {
                steps.push(state(
                    "m.room.guest_access",
                    json!({"guest_access": "can_join"}),
                ));
            }
        }
        // initial_state, then name and topic (which win over initial_state's).
        for (event_type, state_key, content) in &self.initial_state {
            steps.push(Step::State(
                event_type.clone(),
                state_key.clone(),
                content.clone(),
            ));
        }
        if let Some(name) = &self.name {
            steps.push(state("m.room.name", json!({"name": name})));
        }
        if let Some(topic) = &self.topic {
            steps.push(state(
                "m.room.topic",
                json!({
                    // The plain topic, and the same as a rich `m.topic` text block (spec 1.15).
                    "topic": topic,
                    "m.topic": {"m.text": [{"body": topic, "mimetype": "text/plain"}]},
                }),
            ));
        }
        steps.extend(self.invite.iter().map(Step::Invite));
        steps
    }
}

/// The room version a new room gets: `requested`, or the server's default
/// (`rooms.default_room_version`). Versions this server can read and join but not create are
/// refused with `M_UNSUPPORTED_ROOM_VERSION`; account-key rooms are creatable only with
/// `account_keys` (`experimental.msc4243`).
pub(super) fn creatable_version(
    requested: Option<&str>,
    default: &'static RoomVersion,
    account_keys: bool,
) -> Result<&'static RoomVersion> {
    let version = match requested {
        Some(id) => {
            RoomVersion::get(id).map_err(|e| Error::UnsupportedRoomVersion(e.to_string()))?
        }
        None => default,
    };
    if version.uses_account_keys() && !account_keys {
        return Err(Error::UnsupportedRoomVersion(format!(
            "Room version {} ({:?}) is not enabled on this server (experimental.msc4243)",
            version.id(),
            Stability::Unstable
        )));
    }
    Ok(version)
}

impl Rooms {
    /// Creates a room with `creator` in it. Returns the room id.
    pub async fn create_room(&self, creator: &UserId, request: CreateRoom) -> Result<String> {
        let version = creatable_version(
            request.room_version.as_deref(),
            self.default_version,
            self.account_keys.enabled(),
        )?;
        crate::limits::at_most(
            "The number of initial_state events",
            request.initial_state.len(),
            crate::limits::MAX_INITIAL_STATE,
        )?;
        crate::limits::at_most(
            "The number of invites",
            request.invite.len(),
            crate::limits::MAX_CREATE_ROOM_INVITES,
        )?;
        let preset = request.preset.unwrap_or(if request.public {
            Preset::PublicChat
        } else {
            Preset::PrivateChat
        });
        let v12 = version.event_format() == EventFormat::V12;

        let mut creation_content = request.creation_content.clone().unwrap_or_default();
        if v12 && preset == Preset::TrustedPrivateChat && !request.invite.is_empty() {
            // MSC4289: invitees of a trusted private chat are co-creators, with those the
            // client named (whose list, if malformed, the auth rules refuse before the room is
            // made).
            let mut creators = match creation_content.remove("additional_creators") {
                Some(Value::Array(named)) => named,
                Some(other) => vec![other],
                None => Vec::new(),
            };
            for invitee in &request.invite {
                // Account-key rooms name creators by key, and another server's invitee's key
                // is learnt only from the invite: an invitee whose key is not known yet is left
                // out (still invited), not a failed creation (MSC4243.md Q8).
                let invitee = if version.uses_account_keys() {
                    match self.account_keys.known_key_form(invitee.as_str()).await {
                        Ok(key_form) => json!(key_form),
                        Err(Error::InvalidParam(reason)) => {
                            tracing::warn!(%invitee, %reason, "trusted private chat: an invitee whose account key is unknown is not made a creator");
                            continue;
                        }
                        Err(err) => return Err(err),
                    }
                } else {
                    json!(invitee)
                };
                if !creators.contains(&invitee) {
                    creators.push(invitee);
                }
            }
            creation_content.insert("additional_creators".to_owned(), Value::Array(creators));
        }

        let mut power = serde_json::Map::new();
        let mut users = serde_json::Map::new();
        if !v12 {
            // From v12 creators have infinite power and must not be listed.
            users.insert(creator.to_string(), json!(100));
            if preset == Preset::TrustedPrivateChat {
                for invitee in &request.invite {
                    users.insert(invitee.to_string(), json!(100));
                }
            }
        }
        power.insert("users".to_owned(), Value::Object(users));
        power.insert("users_default".to_owned(), json!(0));
        power.insert(
            "events".to_owned(),
            json!({
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                // From v12, upgrading a room needs more than any ordinary admin (MSC4289).
                "m.room.tombstone": if v12 { 150 } else { 100 },
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            }),
        );
        power.insert("events_default".to_owned(), json!(0));
        power.insert("state_default".to_owned(), json!(50));
        power.insert("ban".to_owned(), json!(50));
        power.insert("kick".to_owned(), json!(50));
        power.insert("redact".to_owned(), json!(50));
        power.insert(
            "invite".to_owned(),
            json!(if preset == Preset::PublicChat { 50 } else { 0 }),
        );
        power.insert("notifications".to_owned(), json!({"room": 50}));
        if let Some(overrides) = request.power_level_content_override.clone() {
            for (key, value) in overrides {
                power.insert(key, value);
            }
        }

        let room = self
            .build_room(
                creator,
                NewRoom {
                    version,
                    public: request.public,
                    creation_content,
                    power_levels: power,
                    alias: request.alias,
                    preset: Some(preset),
                    initial_state: request.initial_state,
                    name: request.name,
                    topic: request.topic,
                    invite: request.invite,
                    is_direct: request.is_direct,
                },
            )
            .await?;
        tracing::info!(room_id = %room.room_id, version = version.id(), %creator, "created a room");
        Ok(room.room_id)
    }

    /// Builds a new room with `creator` in it, in the spec's `createRoom` order: the create
    /// event, the creator's join, power levels, the alias and canonical alias, the preset's
    /// rules, `initial_state`, name and topic, invites. The callers have validated `room`.
    pub(super) async fn build_room(&self, creator: &UserId, room: NewRoom) -> Result<RoomRow> {
        let NewRoom {
            version,
            public,
            creation_content: mut create_content,
            power_levels,
            alias,
            preset,
            initial_state,
            name,
            topic,
            invite,
            is_direct,
        } = room;
        // A taken alias fails the request before anything is created.
        if let Some(alias) = &alias
            && self.store.alias(alias.as_str()).await?.is_some()
        {
            return Err(Error::RoomInUse(format!(
                "Room alias {alias} already exists"
            )));
        }
        // So does a local invitee whose invite rules block the creator (the invite itself
        // would be refused in step 6, after the room exists). A remote invitee's server
        // answers for its user then, as for any other refusal of theirs.
        for invitee in invite.iter().filter(|invitee| self.is_local(invitee)) {
            self.refuse_blocked_invite(invitee, creator).await?;
        }

        // 1. The create event. In account-key rooms the creator is its key-form id and the
        // create event is signed by its account key; `additional_creators` are keys: a client
        // may name only users whose keys are known (local, or verified, also from other rooms),
        // and an unknown one is refused before anything is written (MSC4243.md Q3, Q8).
        let creator_id = self.room_user_id(version, creator).await?;
        let account_key = if version.uses_account_keys() {
            if let Some(Value::Array(creators)) = create_content.get("additional_creators").cloned()
            {
                let mut keyed = Vec::with_capacity(creators.len());
                for named in creators {
                    let Value::String(named) = named else {
                        // Not a user id at all: the auth rules refuse it below.
                        keyed.push(named);
                        continue;
                    };
                    keyed.push(Value::String(
                        self.account_keys.known_key_form(&named).await?,
                    ));
                }
                create_content.insert("additional_creators".to_owned(), Value::Array(keyed));
            }
            Some(self.account_keys.signing_key(creator.localpart()).await?)
        } else {
            None
        };
        create_content.insert("room_version".to_owned(), json!(version.id()));
        if !version.auth_rules().creator_is_create_sender {
            // Before v11 the creator is named in the content.
            create_content.insert("creator".to_owned(), json!(creator));
        } else {
            create_content.remove("creator");
        }
        let now = now_millis();
        let mut partial = CanonicalJsonObject::new();
        partial.insert(
            "type".to_owned(),
            CanonicalJsonValue::String("m.room.create".to_owned()),
        );
        partial.insert(
            "sender".to_owned(),
            CanonicalJsonValue::String(creator_id.clone()),
        );
        partial.insert(
            "state_key".to_owned(),
            CanonicalJsonValue::String(String::new()),
        );
        partial.insert(
            "content".to_owned(),
            CanonicalJsonValue::Object(to_canonical_object(Value::Object(create_content))?),
        );
        partial.insert(
            "prev_events".to_owned(),
            CanonicalJsonValue::Array(Vec::new()),
        );
        partial.insert(
            "auth_events".to_owned(),
            CanonicalJsonValue::Array(Vec::new()),
        );
        partial.insert("depth".to_owned(), CanonicalJsonValue::Integer(1u32.into()));
        partial.insert(
            "origin_server_ts".to_owned(),
            CanonicalJsonValue::Integer(super::int(now)?),
        );
        let room_id = match version.room_id_format() {
            RoomIdFormat::CreateEventHash => None,
            _ => {
                let id = format!(
                    "!{}:{}",
                    tokens::random_from(
                        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                        18
                    ),
                    self.server_name
                );
                partial.insert("room_id".to_owned(), CanonicalJsonValue::String(id.clone()));
                Some(id)
            }
        };
        // From v12 the room id is the create event's hash: two identical createRoom requests in
        // one millisecond would name the same room. The later one moves to the next
        // millisecond until its id is free.
        self.assign_event_id(&mut partial, version);
        let mut now = now;
        let mut attempts = 0;
        let (create, creation, operation_id) = loop {
            let signer = match &account_key {
                Some(pair) => EventSigner::Account(pair),
                None => self.keys.event_signer(),
            };
            let create = build_pdu(partial.clone(), version, signer).map_err(pdu_error)?;
            check_auth_events(version, &create, |_| None).map_err(auth_error)?;
            let room_id = room_id
                .clone()
                .unwrap_or_else(|| format!("!{}", create.event_id().trim_start_matches('$')));
            // Everything the rest of the build needs is journaled with the room row, so that a
            // build a crash cuts short is finished (`crate::operations`).
            let creation = RoomCreation {
                room_id,
                creator: creator.to_owned(),
                create_event_id: create.event_id().to_owned(),
                create_event: create.canonical_json(),
                power_levels: power_levels.clone(),
                alias: alias.clone(),
                preset,
                initial_state: initial_state.clone(),
                name: name.clone(),
                topic: topic.clone(),
                invite: invite.clone(),
                is_direct,
                now,
            };
            // Every step the room's rules (or the server's) would refuse is refused now, before
            // the room exists: a refused `initial_state` event, power levels that lock the
            // creator out of a later step, an event too large... (see `check`).
            self.check_build(version, &create, &creation, &creator_id, signer)
                .await?;
            let params = serde_json::to_string(&creation)
                .map_err(|e| Error::Internal(format!("journaling a room creation: {e}")))?;
            match self
                .store
                .create_room_with_operation(
                    &creation.room_id,
                    version.id(),
                    creator.as_str(),
                    public,
                    now,
                    alias.as_ref().map(|alias| alias.as_str()),
                    &self
                        .journal
                        .operation(CREATE_ROOM, creator.as_str(), &params),
                )
                .await
            {
                Ok(Some((_, operation_id))) => break (create, creation, operation_id),
                // Taken since the check above, by a concurrent request: nothing was written.
                Ok(None) => {
                    return Err(Error::RoomInUse(format!(
                        "Room alias {} already exists",
                        alias.as_ref().map(|a| a.as_str()).unwrap_or_default()
                    )));
                }
                Err(myelin_store::StoreError::Conflict(_)) if attempts < 100 => {
                    attempts += 1;
                    now += 1;
                    partial.insert(
                        "origin_server_ts".to_owned(),
                        CanonicalJsonValue::Integer(super::int(now)?),
                    );
                }
                Err(err) => return Err(err.into()),
            }
        };
        let running = self.journal.running(operation_id);
        let built = async {
            crash_point!("create_room::after_room_row", creator);
            let room = self.room(&creation.room_id).await?;
            self.append_create_event(&room, &create, creation.now)
                .await?;
            self.build_steps(&room, &creation, None).await?;
            Ok(room)
        }
        .await;
        match built {
            Ok(room) => {
                self.journal.finish(running).await?;
                Ok(room)
            }
            Err(err) => Err(self.journal.stopped(running, err).await),
        }
    }

    /// Finishes building a room whose build was journaled but not finished (a crash, a failure
    /// of this server's): the create event if the room has none, then every step of the
    /// build that is not done already (see [`Rooms::build_steps`]).
    pub(crate) async fn resume_room_creation(&self, params: &str) -> Result<()> {
        let creation: RoomCreation = serde_json::from_str(params)
            .map_err(|e| Error::BadJson(format!("journaled room creation: {e}")))?;
        let room = self.room(&creation.room_id).await?;
        let state = self.state_contents(&room).await?;
        if !state.contains_key(&("m.room.create".to_owned(), String::new())) {
            let version = version_of(&room)?;
            let json =
                myelin_room_version::canonical::parse_object(creation.create_event.as_bytes())
                    .map_err(|e| Error::BadJson(format!("journaled create event: {e}")))?;
            let create = Pdu::from_stored(&creation.create_event_id, json, version)
                .map_err(|e| Error::BadJson(format!("journaled create event: {e}")))?;
            self.append_create_event(&room, &create, creation.now)
                .await?;
        }
        self.build_steps(&room, &creation, Some(&state)).await?;
        tracing::info!(room_id = %room.room_id, creator = %creation.creator, "finished building a room after a restart");
        Ok(())
    }

    /// A new room's first event, with the room's writer lock.
    async fn append_create_event(&self, room: &RoomRow, create: &Pdu, now: i64) -> Result<()> {
        let writing = self.locks.writer(&room.room_id).await;
        self.append(super::append::Appending {
            room,
            pdu: create,
            status: myelin_store::EventStatus::Normal,
            placement: myelin_store::Placement::Live,
            state_before: None,
            replaces: None,
            current_state: Some(myelin_store::CurrentStateChange::Extend),
            txn: None,
            redaction: None,
            redaction_waits: None,
            redacted_by: None,
            now,
            push_inputs: None,
            writing: Some(writing),
            just_built: true,
            delivery: Delivery::BySender,
        })
        .await?;
        Ok(())
    }

    /// The room's current state events' contents by key.
    async fn state_contents(&self, room: &RoomRow) -> Result<HashMap<StateKey, Value>> {
        let mut contents = HashMap::new();
        for event in self.store.current_state(room.room_nid, None).await? {
            let mut json: Value = serde_json::from_str(&event.json)
                .map_err(|e| Error::Internal(format!("stored event {}: {e}", event.event_id)))?;
            contents.insert(
                (event.event_type, event.state_key.unwrap_or_default()),
                json["content"].take(),
            );
        }
        Ok(contents)
    }

    /// The build's steps after the create event, in the spec's `createRoom` order: the
    /// creator's join, power levels, the alias and canonical alias, the preset's rules,
    /// `initial_state`, name and topic, invites. `resuming` (with the room's state when the
    /// resume began) skips the steps that are done: a membership the room has, an alias that
    /// exists, state that holds the step's content or that a later step of the build sets.
    async fn build_steps(
        &self,
        room: &RoomRow,
        creation: &RoomCreation,
        resuming: Option<&HashMap<StateKey, Value>>,
    ) -> Result<()> {
        let steps = creation.steps();
        for (index, step) in steps.iter().enumerate() {
            if let Some(state) = resuming
                && self.step_done(room, creation, &steps, index, state).await?
            {
                continue;
            }
            let done = self.run_step(room, creation, step).await;
            match done {
                Ok(()) => {}
                // Every step was authorised before the room was made (`check`): only a change
                // the room's members made meanwhile (the creator's other devices see the room
                // from its first event) can refuse one now. The build goes on with what the
                // room's rules allow, live as when resuming (whose request has had its answer).
                Err(err) if !crate::operations::is_transient(&err) => {
                    tracing::warn!(room_id = %room.room_id, %err, "building a room: a step was refused");
                }
                Err(err) => return Err(err),
            }
            if matches!(step, Step::Join) {
                crash_point!("create_room::after_join", &creation.creator);
            }
        }
        Ok(())
    }

    async fn step_done(
        &self,
        room: &RoomRow,
        creation: &RoomCreation,
        steps: &[Step<'_>],
        index: usize,
        state: &HashMap<StateKey, Value>,
    ) -> Result<bool> {
        let member = |user: &str| {
            let user = user.to_owned();
            async move { Ok::<_, Error>(self.store.membership(room.room_nid, &user).await?.is_some()) }
        };
        Ok(match &steps[index] {
            Step::Join => member(creation.creator.as_str()).await?,
            Step::State(event_type, state_key, content) => {
                let overridden = steps[index + 1..].iter().any(|later| {
                    matches!(later, Step::State(t, k, _) if t == event_type && k == state_key)
                });
                if overridden {
                    true
                } else if event_type == "m.room.member" {
                    member(state_key.as_str()).await?
                } else {
                    state
                        .get(&(event_type.clone(), state_key.clone()))
                        .is_some_and(|current| current == content)
                }
            }
            Step::Alias(alias) => self.store.alias(alias.as_str()).await?.is_some(),
            Step::Invite(invitee) => member(invitee.as_str()).await?,
        })
    }

    async fn run_step(
        &self,
        room: &RoomRow,
        creation: &RoomCreation,
        step: &Step<'_>,
    ) -> Result<()> {
        let creator: &UserId = &creation.creator;
        match step {
            Step::Join => {
                self.send_state(
                    room,
                    creator,
                    "m.room.member",
                    creator.as_str(),
                    self.join_content(creator, None).await?,
                )
                .await?;
            }
            Step::State(event_type, state_key, content) => {
                self.send_state(
                    room,
                    creator,
                    event_type.as_str(),
                    state_key.as_str(),
                    content.clone(),
                )
                .await?;
            }
            Step::Alias(alias) => {
                // Written with the room row (`Store::create_room_with_operation`) since; a
                // build journaled before that writes it here.
                let points_here = self
                    .store
                    .alias(alias.as_str())
                    .await?
                    .is_some_and(|row| row.room_nid == room.room_nid);
                if !points_here
                    && !self
                        .store
                        .create_alias(
                            alias.as_str(),
                            room.room_nid,
                            creator.as_str(),
                            now_millis(),
                        )
                        .await?
                {
                    return Err(Error::RoomInUse(format!(
                        "Room alias {alias} already exists"
                    )));
                }
            }
            Step::Invite(invitee) => {
                let mut content = json!({"membership": "invite"});
                if creation.is_direct {
                    content["is_direct"] = json!(true);
                }
                let sent = self
                    .send_state(room, creator, "m.room.member", invitee.as_str(), content)
                    .await;
                match sent {
                    Ok(_) => {}
                    // The room exists by now: an invitee's server that does not take the invite
                    // (down, or refusing) leaves that user uninvited, the creator can try again.
                    Err(err) if !self.is_local(invitee) => {
                        tracing::info!(room_id = %room.room_id, %invitee, %err, "createRoom: the invitee's server did not take the invite");
                    }
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }

    /// Room creation's state events go through the same rules as a client's (membership
    /// events to the membership rule, so `initial_state` is no way around it).
    pub(super) async fn send_state(
        &self,
        room: &myelin_store::RoomRow,
        sender: &UserId,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> Result<String> {
        self.send_state_of(room, sender, event_type, state_key, content)
            .await
    }
}

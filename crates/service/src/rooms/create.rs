//! `createRoom`: the create event (whose hash is the room id from v12 on), the creator's join,
//! power levels, the alias and canonical alias (`room_alias_name`), the preset's join rules,
//! history visibility and guest access, `initial_state`, name, topic, and invites, in the spec's
//! order. [`Rooms::build_room`] sends them; room upgrades build their replacement room with it
//! too.

use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, RoomVersion,
    auth::{check_auth_events, check_power_levels_content},
    pdu::{EventSigner, build_pdu},
    version::{EventFormat, RoomIdFormat, Stability},
};
use myelin_store::{Delivery, RoomRow};
use ruma::{OwnedRoomAliasId, OwnedUserId, UserId};
use serde_json::{Value, json};

use super::{
    Rooms,
    events::{auth_error, pdu_error},
    to_canonical_object,
};
use crate::{Error, Result, now_millis, tokens};

/// The spec's presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        partial.insert("sender".to_owned(), CanonicalJsonValue::String(creator_id));
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
        let (create, room_id) = loop {
            let signer = match &account_key {
                Some(pair) => EventSigner::Account(pair),
                None => self.keys.event_signer(),
            };
            let create = build_pdu(partial.clone(), version, signer).map_err(pdu_error)?;
            // What the auth rules would refuse in the create event or the power levels is
            // refused before the room exists (a bad power_level_content_override used to leave
            // a half-made room).
            check_auth_events(version, &create, |_| None).map_err(auth_error)?;
            check_power_levels_content(
                version,
                &to_canonical_object(Value::Object(power_levels.clone()))?,
                &create,
            )
            .map_err(auth_error)?;
            let room_id = room_id
                .clone()
                .unwrap_or_else(|| format!("!{}", create.event_id().trim_start_matches('$')));
            match self
                .store
                .create_room(&room_id, version.id(), creator.as_str(), public, now)
                .await
            {
                Ok(_) => break (create, room_id),
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
        let room = self.room(&room_id).await?;
        let writing = self.locks.writer(&room.room_id).await;
        self.append(super::append::Appending {
            room: &room,
            pdu: &create,
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
            writing,
            just_built: true,
            delivery: Delivery::BySender,
        })
        .await?;

        // 2. The creator joins.
        self.send_state(
            &room,
            creator,
            "m.room.member",
            creator.as_str(),
            self.join_content(creator, None).await?,
        )
        .await?;

        // 3. Power levels (checked before anything was written).
        self.send_state(
            &room,
            creator,
            "m.room.power_levels",
            "",
            Value::Object(power_levels),
        )
        .await?;

        // 3b. The alias, then the canonical alias naming it.
        if let Some(alias) = &alias {
            if !self
                .store
                .create_alias(alias.as_str(), room.room_nid, creator.as_str(), now)
                .await?
            {
                // Taken since the check above by a concurrent request.
                return Err(Error::RoomInUse(format!(
                    "Room alias {alias} already exists"
                )));
            }
            self.send_state(
                &room,
                creator,
                "m.room.canonical_alias",
                "",
                json!({"alias": alias}),
            )
            .await?;
        }

        // 4. The preset's rules.
        if let Some(preset) = preset {
            let join_rule = if preset == Preset::PublicChat {
                "public"
            } else {
                "invite"
            };
            self.send_state(
                &room,
                creator,
                "m.room.join_rules",
                "",
                json!({"join_rule": join_rule}),
            )
            .await?;
            self.send_state(
                &room,
                creator,
                "m.room.history_visibility",
                "",
                json!({"history_visibility": "shared"}),
            )
            .await?;
            if preset != Preset::PublicChat {
                self.send_state(
                    &room,
                    creator,
                    "m.room.guest_access",
                    "",
                    json!({"guest_access": "can_join"}),
                )
                .await?;
            }
        }

        // 5. initial_state, then name and topic (which win over initial_state's).
        for (event_type, state_key, content) in initial_state {
            self.send_state(&room, creator, &event_type, &state_key, content)
                .await?;
        }
        if let Some(name) = name {
            self.send_state(&room, creator, "m.room.name", "", json!({"name": name}))
                .await?;
        }
        if let Some(topic) = topic {
            self.send_state(
                &room,
                creator,
                "m.room.topic",
                "",
                json!({
                    // The plain topic, and the same as a rich `m.topic` text block (spec 1.15).
                    "topic": topic,
                    "m.topic": {"m.text": [{"body": topic, "mimetype": "text/plain"}]},
                }),
            )
            .await?;
        }

        // 6. Invites.
        for invitee in &invite {
            let mut content = json!({"membership": "invite"});
            if is_direct {
                content["is_direct"] = json!(true);
            }
            let sent = self
                .send_state(&room, creator, "m.room.member", invitee.as_str(), content)
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
        Ok(room)
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

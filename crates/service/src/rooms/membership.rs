//! Membership changes by local users: join (including restricted joins authorised by a local
//! resident), leave, invite, kick, ban, unban, knock and forget.
//!
//! Every membership event a local user sends, whatever endpoint it comes through (the
//! membership endpoints, `PUT /state/m.room.member/{userId}`, room creation, profile changes,
//! deactivation), goes through [`Rooms::change_membership`]: the checks the auth rules leave to
//! the resident server (who authorises a restricted join, leaving only rooms one is in) are made
//! there and nowhere else. The room version's auth rules then decide the rest. An invite of a
//! user of another server, and the rejection of an invite to a room this server is not in, go
//! on to `invites`, and a ban of another server's user whose key an account-key room does not
//! know on to `bans`, where the other server takes part.

use myelin_store::RoomRow;
use ruma::{RoomId, UserId};
use serde_json::{Map, Value, json};

use myelin_room_version::redaction::{PowerLevel, user_power_level};

use super::{
    Rooms,
    events::{LocalEvent, Ruled},
    pdu_of, version_of,
};
use crate::{Error, Result};

/// How a restricted room's `allow` conditions judge a join ([`Rooms::restricted_join`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RestrictedJoin {
    /// The room is not restricted, or the user is invited or joined already: the auth rules
    /// decide alone.
    NotNeeded,
    /// The user is in an allowed room; these local residents may authorise the join (none:
    /// this server cannot authorise it).
    Allowed { authorisers: Vec<String> },
    /// The user is in none of the allowed rooms this server knows; `can_tell` says whether this
    /// server is in any allowed room at all, or no room is allowed (else another server may
    /// know better).
    NotAllowed { can_tell: bool },
}

/// A membership event that went through [`Rooms::change_membership`]: only this module makes
/// one.
#[derive(Debug, Clone)]
pub(crate) struct MembershipRuled(());

/// A membership event that passed [`Rooms::change_membership`]'s rules.
fn member_event(target: &UserId, content: Map<String, Value>) -> LocalEvent<'_> {
    LocalEvent {
        event_type: "m.room.member",
        state_key: Some(target.as_str()),
        content: Value::Object(content),
        ruled: Ruled::Membership(MembershipRuled(())),
        txn: None,
    }
}

fn with_reason(mut content: Value, reason: Option<&str>) -> Value {
    if let Some(reason) = reason {
        content["reason"] = json!(reason);
    }
    content
}

impl Rooms {
    /// A join's content: the membership and the user's profile, as clients expect to render it.
    pub(super) async fn join_content(&self, user: &UserId, reason: Option<&str>) -> Result<Value> {
        let mut content = with_reason(json!({"membership": "join"}), reason);
        if let Some(profile) = self.store.profile(user.as_str()).await? {
            if let Some(name) = profile.displayname {
                content["displayname"] = json!(name);
            }
            if let Some(url) = profile.avatar_url {
                content["avatar_url"] = json!(url);
            }
        }
        Ok(content)
    }

    /// After a profile change: a new join event with the new profile in every joined room.
    /// A room whose rules refuse the update is skipped (and logged), not a failure of the change;
    /// any other failure stops it (the journal resumes it, `crate::operations`). `resuming`
    /// skips the rooms whose member event carries the profile already.
    pub async fn profile_changed(&self, user: &UserId, resuming: bool) -> Result<()> {
        let rooms = self
            .store
            .rooms_with_membership(user.as_str(), "join")
            .await?;
        for (index, room_id) in rooms.iter().enumerate() {
            if index == 1 {
                crate::operations::crash_point!("profile::after_first_room", user);
            }
            let room = self.room(room_id).await?;
            let content = self.join_content(user, None).await?;
            if resuming && self.member_event_carries(&room, user, &content).await? {
                continue;
            }
            if let Err(err) = self.change_membership(&room, user, user, content).await {
                if crate::operations::is_transient(&err) {
                    return Err(err);
                }
                tracing::warn!(%room_id, %user, %err, "could not update the member event after a profile change");
            }
        }
        Ok(())
    }

    /// Whether a local user's current member event in `room` is a join with the display name
    /// and avatar of `content`.
    async fn member_event_carries(
        &self,
        room: &RoomRow,
        user: &UserId,
        content: &Value,
    ) -> Result<bool> {
        let state_key = match version_of(room)?.uses_account_keys() {
            true => self.key_form_of(user).unwrap_or_else(|| user.to_string()),
            false => user.to_string(),
        };
        let events = self
            .store
            .current_state(
                room.room_nid,
                Some(&[("m.room.member".to_owned(), state_key)]),
            )
            .await?;
        let Some(event) = events.first() else {
            return Ok(false);
        };
        let current: Value = serde_json::from_str(&event.json)
            .map_err(|e| Error::Internal(format!("stored event {}: {e}", event.event_id)))?;
        let current = &current["content"];
        Ok(["membership", "displayname", "avatar_url"]
            .iter()
            .all(|field| current.get(field) == content.get(field)))
    }

    /// Leaves every room the user is joined to, invited to or knocking on (deactivation). A
    /// room whose rules refuse the leave is skipped (and logged); any other failure stops it
    /// (the journal resumes it, `crate::operations`).
    pub async fn leave_all(&self, user: &UserId) -> Result<()> {
        let mut left = 0;
        for membership in ["join", "invite", "knock"] {
            for room_id in self
                .store
                .rooms_with_membership(user.as_str(), membership)
                .await?
            {
                if left == 1 {
                    crate::operations::crash_point!("deactivate::after_first_room", user);
                }
                left += 1;
                let room = self.room(&room_id).await?;
                if let Err(err) = self
                    .change_membership(&room, user, user, json!({"membership": "leave"}))
                    .await
                {
                    if crate::operations::is_transient(&err) {
                        return Err(err);
                    }
                    tracing::warn!(%room_id, %user, %err, "could not leave a room on deactivation");
                }
            }
        }
        Ok(())
    }

    /// A room this server is in, or the error a join to a room it is not in gets (a room known
    /// only through an invite from another server has no state here to build a join on).
    async fn known_room(&self, room_id: &str) -> Result<RoomRow> {
        match self.store.room(room_id).await? {
            Some(room) if self.holds_state(&room).await? => Ok(room),
            _ => Err(Error::NotFound(format!(
                "Room {room_id} is not known to this server"
            ))),
        }
    }

    /// The one door for membership events from local users (see the module docs). `content`
    /// is the event's content as the client gave it.
    pub(crate) async fn change_membership(
        &self,
        room: &RoomRow,
        sender: &UserId,
        target: &UserId,
        content: Value,
    ) -> Result<String> {
        let (mut content, membership) = client_member_content(content)?;
        // Whether this is a user joining (not a join refreshing their profile): their settings
        // follow them from the room's predecessor.
        let mut newly_joining = false;
        match membership.as_str() {
            "join" => {
                if sender == target
                    && let Some(authoriser) = self.restricted_join_authoriser(room, target).await?
                {
                    content.insert(
                        "join_authorised_via_users_server".to_owned(),
                        json!(authoriser),
                    );
                }
                newly_joining = sender == target
                    && self
                        .store
                        .membership(room.room_nid, target.as_str())
                        .await?
                        .is_none_or(|(m, _, _)| m != "join");
            }
            "invite" if !self.is_local(target) => {
                // The invitee's server signs the invite before it is stored here.
                return self
                    .invite_remote(room, sender, target, member_event(target, content))
                    .await;
            }
            "invite" => {
                // The invitee's invite rules (MSC4155): a blocked invite is refused before it
                // is built; an ignored one is sent, and `/sync` hides it.
                self.refuse_blocked_invite(target, sender).await?;
            }
            "leave" if sender == target && self.member_from_outside(room, target).await? => {
                // An invite to (or a knock on) a room this server is not in: rejected or
                // rescinded through another server of the room (or out of band).
                let reason = content.get("reason").and_then(Value::as_str);
                return self.reject_outside_invite(room, target, reason).await;
            }
            "leave" => {
                // Another server's member of an account-key room is indexed by key (local
                // members by account name too).
                let indexed = if version_of(room)?.uses_account_keys() && !self.is_local(target) {
                    self.key_form_in_room(room, target.as_str()).await?
                } else {
                    target.to_string()
                };
                let current = self.store.membership(room.room_nid, &indexed).await?;
                check_leave_target(sender, target, current.as_ref().map(|m| m.0.as_str()))?;
            }
            "ban" if version_of(room)?.uses_account_keys() && !self.is_local(target) => {
                // Another server's user whose key the room does not know, named by account
                // name: that server puts the key in (`/ban`, MSC4243.md §2.5 item 34). A known
                // key (a member's) takes the normal path; an unknown key-form id is never sent
                // as a name.
                match self.key_form_in_room(room, target.as_str()).await {
                    Ok(_) => {}
                    Err(Error::InvalidParam(_))
                        if myelin_room_version::KeyFormUserId::parse(target.as_str()).is_err() =>
                    {
                        return self.ban_remote(room, sender, target, content).await;
                    }
                    Err(err) => return Err(err),
                }
            }
            "ban" | "knock" => {}
            other => {
                return Err(Error::BadJson(format!("Unknown membership {other:?}")));
            }
        }
        let event_id = self
            .send(room, sender, member_event(target, content))
            .await?;
        if newly_joining {
            // The join stands whatever happens here: settings that do not follow are logged.
            if let Err(err) = self.carry_over_from_predecessor(room, target).await {
                tracing::warn!(room_id = %room.room_id, user = %target, %err, "could not carry settings over from the predecessor room");
            }
        }
        Ok(event_id)
    }

    /// [`Rooms::carry_over_from_predecessor`] after a join through another server (the join
    /// stands whatever happens here: settings that do not follow are logged).
    pub(crate) async fn carry_over_after_join(&self, room_id: &str, user: &UserId) {
        let carried = match self.store.room(room_id).await {
            Ok(Some(room)) => self.carry_over_from_predecessor(&room, user).await,
            Ok(None) => Ok(()),
            Err(err) => Err(err.into()),
        };
        if let Err(err) = carried {
            tracing::warn!(%room_id, %user, %err, "could not carry settings over from the predecessor room");
        }
    }

    /// After `user` joined `room`: if the room replaces another (its create event names a
    /// `predecessor`), the user's tags, direct chat entry and push rules for the old room are
    /// copied to this one (the spec's room upgrade module). Every join path comes here, the
    /// replacement's creator included, and joins through another server
    /// ([`Rooms::carry_over_after_join`]), whether the room came from `/upgrade` or from a client
    /// creating it with a `predecessor` itself.
    async fn carry_over_from_predecessor(&self, room: &RoomRow, user: &UserId) -> Result<()> {
        let keys = [("m.room.create".to_owned(), String::new())];
        let state = self.store.current_state(room.room_nid, Some(&keys)).await?;
        let Some(create) = state.first() else {
            return Ok(());
        };
        let create: Value = serde_json::from_str(&create.json)
            .map_err(|e| Error::Internal(format!("stored create event: {e}")))?;
        let Some(old_room) = create["content"]["predecessor"]["room_id"].as_str() else {
            return Ok(());
        };
        let (Ok(old_room), Ok(new_room)) = (RoomId::parse(old_room), RoomId::parse(&room.room_id))
        else {
            return Ok(());
        };
        if old_room == new_room {
            return Ok(());
        }
        self.user_data
            .carry_over_to_replacement(user, &old_room, &new_room)
            .await
    }

    /// Joins `user` to a room. For restricted rooms the join names a local resident who may
    /// invite, as the spec's restricted-join rules require.
    ///
    /// `extra_content`: keys of the client's request body beyond the endpoint's own, kept in
    /// the member event's content (as other servers keep them). The membership, the profile
    /// (`displayname`, `avatar_url`: from the user's profile only, so that a profile change
    /// rewrites them consistently) and the reason are the server's, whatever the client sent;
    /// the door [`Rooms::change_membership`] drops a client's `join_authorised_via_users_server`.
    pub async fn join(
        &self,
        user: &UserId,
        room_id: &str,
        reason: Option<&str>,
        extra_content: Map<String, Value>,
    ) -> Result<String> {
        let room = self.known_room(room_id).await?;
        let content = self
            .client_join_content(user, reason, extra_content)
            .await?;
        self.change_membership(&room, user, user, Value::Object(content))
            .await?;
        Ok(room.room_id)
    }

    /// A join's content from a client's `/join`: the keys it added (`extra_content`), with
    /// the membership, profile and reason the server's (see [`Rooms::join`]).
    pub(crate) async fn client_join_content(
        &self,
        user: &UserId,
        reason: Option<&str>,
        extra_content: Map<String, Value>,
    ) -> Result<Map<String, Value>> {
        let mut content = extra_content;
        for key in [
            "membership",
            "displayname",
            "avatar_url",
            "reason",
            "join_authorised_via_users_server",
        ] {
            content.remove(key);
        }
        if let Value::Object(ours) = self.join_content(user, reason).await? {
            content.extend(ours);
        }
        Ok(content)
    }

    /// For a restricted room the user is not invited to: a joined local user with invite power,
    /// if the user is joined to one of the rooms the join rule allows.
    async fn restricted_join_authoriser(
        &self,
        room: &RoomRow,
        user: &UserId,
    ) -> Result<Option<String>> {
        let version = version_of(room)?;
        // Key form in account-key rooms.
        let member_key = self.room_user_id(version, user).await?;
        match self.restricted_join(room, &member_key, user).await? {
            RestrictedJoin::Allowed { authorisers } => match authorisers.into_iter().next() {
                Some(authoriser) => Ok(Some(authoriser)),
                None => Err(Error::UnableToAuthoriseJoin(
                    "No joined user on this server can authorise the join".to_owned(),
                )),
            },
            // Let the auth rules refuse it with their own reason.
            RestrictedJoin::NotNeeded | RestrictedJoin::NotAllowed { .. } => Ok(None),
        }
    }

    /// How the join rules of `room` judge a join of `user` (named `member_key` in the room's
    /// state) that would need an authoriser: the one reading of the restricted-join `allow`
    /// conditions, for local joins ([`Rooms::change_membership`]) and for other servers' users
    /// joining through this server (`make_join`/`send_join`, `federation_membership`).
    pub(super) async fn restricted_join(
        &self,
        room: &RoomRow,
        member_key: &str,
        user: &UserId,
    ) -> Result<RestrictedJoin> {
        let version = version_of(room)?;
        let keys = [
            ("m.room.join_rules".to_owned(), String::new()),
            ("m.room.member".to_owned(), member_key.to_owned()),
            ("m.room.power_levels".to_owned(), String::new()),
            ("m.room.create".to_owned(), String::new()),
        ];
        let state = self.store.current_state(room.room_nid, Some(&keys)).await?;
        let content_of = |kind: &str| -> Option<Value> {
            state
                .iter()
                .find(|row| row.event_type == kind)
                .and_then(|row| {
                    serde_json::from_str::<Value>(&row.json)
                        .ok()
                        .map(|json| json["content"].clone())
                })
        };
        let Some(join_rules) = content_of("m.room.join_rules") else {
            return Ok(RestrictedJoin::NotNeeded);
        };
        let rule = join_rules["join_rule"].as_str().unwrap_or_default();
        if rule != "restricted" && rule != "knock_restricted" {
            return Ok(RestrictedJoin::NotNeeded);
        }
        let membership =
            content_of("m.room.member").and_then(|c| c["membership"].as_str().map(str::to_owned));
        if matches!(membership.as_deref(), Some("invite" | "join")) {
            return Ok(RestrictedJoin::NotNeeded);
        }
        // The user must be in one of the allowed rooms; this server can only tell for the
        // rooms it is in.
        let allowed = join_rules["allow"].as_array().cloned().unwrap_or_default();
        let mut in_allowed_room = false;
        let mut can_tell = false;
        for entry in allowed {
            if entry["type"] == "m.room_membership"
                && let Some(allowed_room) = entry["room_id"].as_str()
                && let Some(allowed_room) = self.store.room(allowed_room).await?
            {
                // What this server knows of a room it has left is stale: only a room it is
                // in tells.
                let in_room = self
                    .store
                    .server_in_room(allowed_room.room_nid, self.server_name.as_str())
                    .await?;
                can_tell |= in_room;
                if in_room
                    && self
                        .store
                        .membership(allowed_room.room_nid, user.as_str())
                        .await?
                        .is_some_and(|m| m.0 == "join")
                {
                    in_allowed_room = true;
                    break;
                }
            }
        }
        if !in_allowed_room {
            // With no room allowed at all, no server could grant the join: that is sure.
            let rooms_allowed = join_rules["allow"]
                .as_array()
                .is_some_and(|rules| rules.iter().any(|e| e["type"] == "m.room_membership"));
            return Ok(RestrictedJoin::NotAllowed {
                can_tell: can_tell || !rooms_allowed,
            });
        }
        let create = state
            .iter()
            .find(|row| row.event_type == "m.room.create")
            .map(|row| pdu_of(row, version))
            .transpose()?
            .ok_or_else(|| Error::Internal("room without a create event".to_owned()))?;
        let power = state
            .iter()
            .find(|row| row.event_type == "m.room.power_levels")
            .map(|row| pdu_of(row, version))
            .transpose()?;
        Ok(RestrictedJoin::Allowed {
            authorisers: self
                .join_authorisers(room, version, &create, power.as_ref())
                .await?,
        })
    }

    /// The joined local residents of `room` whose power reaches the invite level: who may
    /// authorise a restricted join.
    pub(super) async fn join_authorisers(
        &self,
        room: &RoomRow,
        version: &myelin_room_version::RoomVersion,
        create: &myelin_room_version::Pdu,
        power: Option<&myelin_room_version::Pdu>,
    ) -> Result<Vec<String>> {
        Ok(self
            .members_who_may_invite(room, version, create, power)
            .await?
            .into_iter()
            .filter(|member| UserId::parse(member.as_str()).is_ok_and(|id| self.is_local(&id)))
            .collect())
    }

    /// The servers of `room_id`'s joined members (not this one) whose power reaches the
    /// invite level by this server's current state: where a restricted join this server
    /// cannot authorise itself may be authorised (MSC3083: a remote join through them).
    pub async fn servers_able_to_authorise(
        &self,
        room_id: &str,
    ) -> Result<Vec<ruma::OwnedServerName>> {
        let room = self.room(room_id).await?;
        let version = version_of(&room)?;
        let keys = [
            ("m.room.power_levels".to_owned(), String::new()),
            ("m.room.create".to_owned(), String::new()),
        ];
        let state = self.store.current_state(room.room_nid, Some(&keys)).await?;
        let of_type = |kind: &str| {
            state
                .iter()
                .find(|row| row.event_type == kind)
                .map(|row| pdu_of(row, version))
                .transpose()
        };
        let Some(create) = of_type("m.room.create")? else {
            return Ok(Vec::new());
        };
        let power = of_type("m.room.power_levels")?;
        let mut servers: Vec<ruma::OwnedServerName> = Vec::new();
        for member in self
            .members_who_may_invite(&room, version, &create, power.as_ref())
            .await?
        {
            if let Ok(member) = UserId::parse(member.as_str())
                && !self.is_local(&member)
                && !servers.iter().any(|s| s == member.server_name())
            {
                servers.push(member.server_name().to_owned());
            }
        }
        Ok(servers)
    }

    /// The joined members of `room` (of any server) whose power reaches the invite level.
    async fn members_who_may_invite(
        &self,
        room: &RoomRow,
        version: &myelin_room_version::RoomVersion,
        create: &myelin_room_version::Pdu,
        power: Option<&myelin_room_version::Pdu>,
    ) -> Result<Vec<String>> {
        let invite_level = power
            .and_then(|p| p.content_object())
            .and_then(|c| c.get("invite"))
            .and_then(|v| match v {
                myelin_room_version::CanonicalJsonValue::Integer(i) => Some(i64::from(*i)),
                _ => None,
            })
            .unwrap_or(0);
        let all = self.store.current_state(room.room_nid, None).await?;
        let mut authorisers = Vec::new();
        for row in all.iter().filter(|row| row.event_type == "m.room.member") {
            let Some(resident) = row.state_key.as_deref() else {
                continue;
            };
            if UserId::parse(resident).is_err() {
                continue;
            }
            let joined = serde_json::from_str::<Value>(&row.json)
                .is_ok_and(|json| json["content"]["membership"] == "join");
            if !joined {
                continue;
            }
            if user_power_level(version, resident, create, power) >= PowerLevel::Int(invite_level) {
                authorisers.push(resident.to_owned());
            }
        }
        Ok(authorisers)
    }

    pub async fn leave(&self, user: &UserId, room_id: &str, reason: Option<&str>) -> Result<()> {
        let room = self.room(room_id).await?;
        self.change_membership(
            &room,
            user,
            user,
            with_reason(json!({"membership": "leave"}), reason),
        )
        .await?;
        Ok(())
    }

    pub async fn invite(
        &self,
        sender: &UserId,
        room_id: &str,
        target: &UserId,
        reason: Option<&str>,
        is_direct: bool,
    ) -> Result<()> {
        let room = self.room(room_id).await?;
        let mut content = with_reason(json!({"membership": "invite"}), reason);
        if is_direct {
            content["is_direct"] = json!(true);
        }
        self.change_membership(&room, sender, target, content)
            .await?;
        Ok(())
    }

    /// Kick (`leave`), ban and unban (`leave` after `ban`) of another user.
    pub async fn set_membership_of(
        &self,
        sender: &UserId,
        room_id: &str,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let room = self.room(room_id).await?;
        self.change_membership(
            &room,
            sender,
            target,
            with_reason(json!({"membership": membership}), reason),
        )
        .await?;
        Ok(())
    }

    /// Unban: only from `ban`, to `leave`.
    pub async fn unban(
        &self,
        sender: &UserId,
        room_id: &str,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let room = self.room(room_id).await?;
        let current = self
            .store
            .membership(room.room_nid, target.as_str())
            .await?;
        if current.as_ref().map(|m| m.0.as_str()) != Some("ban") {
            return Err(Error::Forbidden(format!("{target} is not banned")));
        }
        self.change_membership(
            &room,
            sender,
            target,
            with_reason(json!({"membership": "leave"}), reason),
        )
        .await?;
        Ok(())
    }

    pub async fn knock(
        &self,
        user: &UserId,
        room_id: &str,
        reason: Option<&str>,
    ) -> Result<String> {
        let room = self.known_room(room_id).await?;
        self.change_membership(
            &room,
            user,
            user,
            with_reason(json!({"membership": "knock"}), reason),
        )
        .await?;
        Ok(room.room_id)
    }

    /// Forgets a room the user has left (its history stops being offered to them).
    pub async fn forget(&self, user: &UserId, room_id: &str) -> Result<()> {
        let room = self.room(room_id).await?;
        match self.store.membership(room.room_nid, user.as_str()).await? {
            Some((membership, _, _))
                if membership == "join" || membership == "invite" || membership == "knock" =>
            {
                // 400 M_UNKNOWN, the spec's example for this case (and what Complement checks).
                Err(Error::Unknown(
                    "You must leave the room before forgetting it".to_owned(),
                ))
            }
            Some(_) => Ok(self.store.forget_room(room.room_nid, user.as_str()).await?),
            None => Err(Error::NotFound("You were never in this room".to_owned())),
        }
    }
}

/// A leave of `target` by `sender` whose membership is `current`: the auth rules would let a
/// kick of someone who already left through, which only rewrites their leave, so a kick needs
/// a target in the room (joined, invited or knocking) or banned (unban). Leaving twice oneself
/// stays harmless. (Live, and for a new room's `initial_state` before the room exists.)
pub(super) fn check_leave_target(
    sender: &UserId,
    target: &UserId,
    current: Option<&str>,
) -> Result<()> {
    let present = if sender == target {
        current.is_some()
    } else {
        matches!(current, Some("join" | "invite" | "knock" | "ban"))
    };
    if present {
        return Ok(());
    }
    Err(Error::Forbidden(if sender == target {
        "You are not in this room".to_owned()
    } else {
        format!("{target} is not in this room")
    }))
}

/// A member event's content as a local client gave it: a JSON object with a `membership`
/// (returned with it), without `join_authorised_via_users_server` (only this server names who
/// authorises a restricted join, after checking the `allow` conditions itself: our server
/// signs the event, so a name chosen by the client would be our word that the join was
/// allowed), and without a third-party invite (not supported). Live, and for a new room's
/// `initial_state` before the room exists.
pub(super) fn client_member_content(content: Value) -> Result<(Map<String, Value>, String)> {
    let Value::Object(mut content) = content else {
        return Err(Error::BadJson(
            "Event content must be a JSON object".to_owned(),
        ));
    };
    let membership = content
        .get("membership")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::BadJson("A member event needs a membership".to_owned()))?
        .to_owned();
    content.remove("join_authorised_via_users_server");
    if content.contains_key("third_party_invite") {
        return Err(Error::Forbidden(
            "Third-party invites are not supported".to_owned(),
        ));
    }
    Ok((content, membership))
}

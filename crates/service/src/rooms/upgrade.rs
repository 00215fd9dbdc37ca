//! Room upgrades (`POST /rooms/{roomId}/upgrade`, the spec's room upgrades module), in the
//! spec's order:
//!
//! 1. the user must be joined to the old room and able to send `m.room.tombstone` in it;
//! 2. a replacement room of the new version is built by [`Rooms::build_room`] (the same code as
//!    `createRoom`), its create event naming the old room as `predecessor` and copying its
//!    `type` (and `m.federate: false`); from v12 the upgrading user is its creator, with the
//!    request's `additional_creators`, and no creator is listed in its power levels;
//! 3. the transferable state is copied: server ACLs, encryption, name, avatar, topic, guest
//!    access, history visibility, join rules and power levels, a space's children, and bans
//!    (sent by the upgrading user, so no one is impersonated). When the old power levels leave
//!    the upgrading user short of what sending all that needs, the new room starts with them
//!    raised to it and the old power levels are restored at the end;
//! 4. the old room gets an `m.room.tombstone` naming the replacement;
//! 5. the old room's local aliases move to the new room with its canonical alias, and its place
//!    in the room directory if it was published (one transaction);
//! 6. the old room's power levels are locked down: `events_default` and `invite` are raised to
//!    `max(50, users_default + 1)`.
//!
//! Account-key rooms (MSC4243.md Q8): a room upgrades into `org.matrix.12.4243` with every
//! user its state carries named by key. From an account-key room the state is keys already and
//! is carried as it is; from another room the requested creators and the power levels' users
//! must have known keys (local, or verified under that name), or the upgrade is refused before
//! anything is written, and bans are carried by key, or by name through `/ban` for another
//! server's user whose key is unknown. An account-key room upgrades only to an account-key
//! version.
//!
//! Members are not moved or invited: they follow the tombstone. When one joins the replacement,
//! their tags, direct chat entry and push rules for the old room follow them (see
//! [`Rooms::change_membership`]).
//!
//! Everything that can be refused is checked before the first write: the version, the user's
//! membership and power. What cannot be one transaction is the run of events across two rooms:
//! a failure part-way (a database error, or a power level change racing the upgrade) leaves the
//! replacement room without the later steps. The canonical alias events of step 5 and the
//! lock-down of step 6 are skipped, with a log line, when the user may not send them (the
//! spec's "if possible").

use std::collections::HashMap;

use myelin_room_version::{
    Pdu, RoomVersion,
    redaction::{PowerLevel, state_event_level, user_power_level},
};
use myelin_store::{EventRow, RoomRow};
use ruma::{OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use super::{
    Rooms,
    create::{NewRoom, creatable_version},
    pdu_of, version_of,
};
use crate::{Error, Result};

/// The state copied to the replacement room with an empty state key, besides power levels (the
/// spec's recommended list).
const TRANSFERRED_STATE: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

/// The level `m.room.tombstone` gets in a replacement room that privileges its creators when
/// the old room did not (MSC4289: above any ordinary admin, so that upgrading stays the
/// creators' unless they raise someone to it).
const PRIVILEGED_TOMBSTONE_LEVEL: i64 = 150;

/// The body of the tombstone the old room gets.
const TOMBSTONE_BODY: &str = "This room has been replaced";

impl Rooms {
    /// Upgrades `room_id` to `new_version` as `user`. Returns the replacement room's id.
    /// `additional_creators` count only when the new version has creators (v12 on).
    pub async fn upgrade_room(
        &self,
        user: &UserId,
        room_id: &str,
        new_version: &str,
        additional_creators: &[OwnedUserId],
    ) -> Result<String> {
        let version = creatable_version(
            Some(new_version),
            self.default_version,
            self.account_keys.enabled(),
        )?;
        // An unknown room is answered like a room the user is not in, revealing nothing.
        let not_joined = || Error::Forbidden(format!("You are not joined to {room_id}"));
        let old = self.store.room(room_id).await?.ok_or_else(not_joined)?;
        // Two upgrades of one room at once would interleave their events in it.
        let _upgrading = self.locks.upgrade(&old.room_id).await;
        let old_version = version_of(&old)?;
        if old_version.uses_account_keys() && !version.uses_account_keys() {
            // The old room's state names users by key, which only an account-key room can
            // carry (docs/account-keys.md, upgrades).
            return Err(Error::UnsupportedRoomVersion(format!(
                "{room_id} is an account-key room: it can be upgraded to an account-key room version only, not {}",
                version.id()
            )));
        }
        let state = self.store.current_state(old.room_nid, None).await?;
        let old_state = OldState::new(&state, old_version);
        // The upgrading user as each room's state names them (key form in account-key rooms).
        let me_old = self.room_user_id(old_version, user).await?;

        // 1. Permission.
        let membership = old_state.content("m.room.member", &me_old);
        if membership.get("membership").and_then(Value::as_str) != Some("join") {
            return Err(not_joined());
        }
        let create = old_state
            .pdu("m.room.create", "")?
            .ok_or_else(|| Error::Internal(format!("room {room_id} has no create event")))?;
        let power = old_state.pdu("m.room.power_levels", "")?;
        let tombstone_level = state_event_level(old_version, power.as_ref(), "m.room.tombstone");
        if user_power_level(old_version, &me_old, &create, power.as_ref())
            < PowerLevel::Int(tombstone_level)
        {
            return Err(Error::Forbidden(format!(
                "You cannot upgrade {room_id}: it needs the power to send m.room.tombstone ({tombstone_level})"
            )));
        }

        // 2. The replacement room's create event and power levels. Into an account-key room
        // every user is carried by key: the requested creators and the users of the old power
        // levels must have known keys (MSC4243.md Q8), checked before anything is written.
        let privileged = version.privileges_creators();
        let to_keys = version.uses_account_keys() && !old_version.uses_account_keys();
        let me_new = UserId::parse(self.room_user_id(version, user).await?)
            .map_err(|e| Error::Internal(format!("the upgrading user's id: {e}")))?;
        let mut creators: Vec<OwnedUserId> = Vec::new();
        if privileged {
            for creator in additional_creators {
                let creator = if version.uses_account_keys() {
                    let key_form = self.account_keys.known_key_form(creator.as_str()).await?;
                    UserId::parse(key_form.as_str())
                        .map_err(|e| Error::Internal(format!("{key_form}: {e}")))?
                } else {
                    creator.clone()
                };
                if creator != me_new && !creators.contains(&creator) {
                    creators.push(creator);
                }
            }
        }
        let old_create_content = old_state.content("m.room.create", "");
        let mut creation_content = Map::new();
        let mut predecessor = json!({"room_id": old.room_id});
        if !privileged {
            // Before v12 the predecessor names the last event known in the old room; from v12
            // it may be left out (spec 1.16), as the room id is only known once built.
            let head = self.store.send_context(old.room_nid, &[], None).await?.head;
            if let Some(last) = head.prev_event_ids.first() {
                predecessor["event_id"] = json!(last);
            }
        }
        creation_content.insert("predecessor".to_owned(), predecessor);
        if let Some(room_type) = old_create_content.get("type") {
            creation_content.insert("type".to_owned(), room_type.clone());
        }
        if old_create_content.get("m.federate") == Some(&Value::Bool(false)) {
            creation_content.insert("m.federate".to_owned(), json!(false));
        }
        if !creators.is_empty() {
            creation_content.insert("additional_creators".to_owned(), json!(creators));
        }
        let mut old_power =
            old_state
                .content_if_present("m.room.power_levels", "")
                .map(|mut content| {
                    integer_levels(&mut content);
                    content
                });
        if to_keys && let Some(content) = old_power.as_mut() {
            self.power_users_to_keys(content).await?;
        }
        let (initial_power, final_power) = replacement_power_levels(
            old_power.as_ref(),
            &me_new,
            &creators,
            old_version.privileges_creators(),
            privileged,
        );

        // 3. The state that moves with the room.
        let mut initial_state = Vec::new();
        for kind in TRANSFERRED_STATE {
            if let Some(content) = old_state.content_if_present(kind, "") {
                initial_state.push(((*kind).to_owned(), String::new(), Value::Object(content)));
            }
        }
        if old_create_content.get("type").and_then(Value::as_str) == Some("m.space") {
            for (state_key, content) in old_state.all_of("m.space.child") {
                initial_state.push((
                    "m.space.child".to_owned(),
                    state_key,
                    Value::Object(content),
                ));
            }
        }
        let new = self
            .build_room(
                user,
                NewRoom {
                    version,
                    public: false,
                    creation_content,
                    power_levels: initial_power,
                    alias: None,
                    preset: None,
                    initial_state,
                    name: None,
                    topic: None,
                    invite: Vec::new(),
                    is_direct: false,
                },
            )
            .await?;
        for (banned, content) in old_state.all_of("m.room.member") {
            if content.get("membership").and_then(Value::as_str) != Some("ban") {
                continue;
            }
            // Into an account-key room a ban is carried by key when the key is known; another
            // server's user otherwise by name, which that server answers with the key (`/ban`).
            // A local account without a key (deactivated) can never join: nothing to carry.
            let banned = if to_keys {
                match self.account_keys.known_key_form(&banned).await {
                    Ok(key_form) => key_form,
                    Err(Error::InvalidParam(_)) => {
                        if UserId::parse(banned.as_str()).is_ok_and(|b| self.is_local(&b)) {
                            tracing::info!(%banned, room_id = %old.room_id, "room upgrade: the ban of a local account without a key is not carried");
                            continue;
                        }
                        banned
                    }
                    Err(err) => return Err(err),
                }
            } else {
                banned
            };
            let Ok(banned) = UserId::parse(&banned) else {
                continue;
            };
            let mut ban = json!({"membership": "ban"});
            if let Some(reason) = content.get("reason").and_then(Value::as_str) {
                ban["reason"] = json!(reason);
            }
            self.change_membership(&new, user, &banned, ban).await?;
        }
        if let Some(power) = final_power {
            self.send_state(&new, user, "m.room.power_levels", "", Value::Object(power))
                .await?;
        }

        // 4. The tombstone.
        self.send_state(
            &old,
            user,
            "m.room.tombstone",
            "",
            json!({"body": TOMBSTONE_BODY, "replacement_room": new.room_id}),
        )
        .await?;

        // 5. Aliases and the directory.
        let (moved, published) = self
            .store
            .move_directory_entries(old.room_nid, new.room_nid)
            .await?;
        if let Some(canonical) = old_state.content_if_present("m.room.canonical_alias", "") {
            let (kept, carried) = split_canonical_alias(&canonical, &moved);
            if !carried.is_empty() {
                self.send_state_if_allowed(&new, user, "m.room.canonical_alias", carried)
                    .await?;
            }
            if kept != canonical {
                self.send_state_if_allowed(&old, user, "m.room.canonical_alias", kept)
                    .await?;
            }
        }

        // 6. The old room's power levels, locked down.
        let power = self
            .store
            .current_state(
                old.room_nid,
                Some(&[("m.room.power_levels".to_owned(), String::new())]),
            )
            .await?;
        if let Some(row) = power.first()
            && let Some(mut content) = content_of(row)
        {
            integer_levels(&mut content);
            if lock_down(&mut content) {
                self.send_state_if_allowed(&old, user, "m.room.power_levels", content)
                    .await?;
            }
        }
        tracing::info!(old_room = %old.room_id, new_room = %new.room_id, version = version.id(), %user, aliases = moved.len(), published, "upgraded a room");
        Ok(new.room_id)
    }

    /// The users of power levels read from a room that names users by account, by key for an
    /// account-key room: every one must have a known key (local, or verified under its name),
    /// or the upgrade is refused naming them (MSC4243.md Q8: never a guess, and never a
    /// moderator silently losing their power).
    async fn power_users_to_keys(&self, content: &mut Map<String, Value>) -> Result<()> {
        let Some(Value::Object(users)) = content.get("users").cloned() else {
            return Ok(());
        };
        let mut keyed = Map::new();
        let mut unknown = Vec::new();
        for (named, level) in users {
            match self.account_keys.known_key_form(&named).await {
                Ok(key_form) => {
                    keyed.insert(key_form, level);
                }
                Err(Error::InvalidParam(_)) => unknown.push(named),
                Err(err) => return Err(err),
            }
        }
        if !unknown.is_empty() {
            return Err(Error::InvalidParam(format!(
                "The account keys of {} are not known here, so the new room's power levels cannot name them; remove them from the power levels or let them share an account-key room with this server first",
                unknown.join(", ")
            )));
        }
        content.insert("users".to_owned(), Value::Object(keyed));
        Ok(())
    }

    /// Sends a state event of the upgrade that the user's power may not reach; a refusal is
    /// logged and the upgrade goes on.
    async fn send_state_if_allowed(
        &self,
        room: &RoomRow,
        user: &UserId,
        event_type: &str,
        content: Map<String, Value>,
    ) -> Result<()> {
        match self
            .send_state(room, user, event_type, "", Value::Object(content))
            .await
        {
            Ok(_) => Ok(()),
            Err(Error::Forbidden(reason)) => {
                tracing::info!(room_id = %room.room_id, %user, event_type, %reason, "room upgrade: step skipped");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

/// The old room's current state, by type and state key.
struct OldState<'a> {
    version: &'static RoomVersion,
    by_key: HashMap<(&'a str, &'a str), &'a EventRow>,
}

impl<'a> OldState<'a> {
    fn new(state: &'a [EventRow], version: &'static RoomVersion) -> Self {
        let by_key = state
            .iter()
            .map(|row| {
                (
                    (
                        row.event_type.as_str(),
                        row.state_key.as_deref().unwrap_or(""),
                    ),
                    row,
                )
            })
            .collect();
        OldState { version, by_key }
    }

    fn pdu(&self, kind: &str, state_key: &str) -> Result<Option<Pdu>> {
        self.by_key
            .get(&(kind, state_key))
            .map(|row| pdu_of(row, self.version))
            .transpose()
    }

    /// The content of a state event (empty when there is none).
    fn content(&self, kind: &str, state_key: &str) -> Map<String, Value> {
        self.by_key
            .get(&(kind, state_key))
            .and_then(|row| content_of(row))
            .unwrap_or_default()
    }

    /// The content of a state event that says something: absent and emptied events (`{}`, as
    /// after a redaction or a removal) are `None`.
    fn content_if_present(&self, kind: &str, state_key: &str) -> Option<Map<String, Value>> {
        Some(self.content(kind, state_key)).filter(|content| !content.is_empty())
    }

    /// Every non-empty state event of a type, as `(state_key, content)`, by state key.
    fn all_of(&self, kind: &str) -> Vec<(String, Map<String, Value>)> {
        let mut out: Vec<_> = self
            .by_key
            .iter()
            .filter(|((event_type, _), _)| *event_type == kind)
            .filter_map(|((_, state_key), row)| {
                content_of(row)
                    .filter(|c| !c.is_empty())
                    .map(|c| ((*state_key).to_owned(), c))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// A stored event's content, if it is an object.
fn content_of(row: &EventRow) -> Option<Map<String, Value>> {
    match serde_json::from_str::<Value>(&row.json)
        .ok()?
        .get_mut("content")?
        .take()
    {
        Value::Object(content) => Some(content),
        _ => None,
    }
}

/// Power levels read as the rooms before v10 allow (string-encoded integers) made into the
/// JSON integers every room Myelin creates needs.
fn integer_levels(content: &mut Map<String, Value>) {
    let fix = |value: &mut Value| {
        if let Value::String(text) = value
            && let Ok(level) = text.trim().parse::<i64>()
        {
            *value = json!(level);
        }
    };
    for (key, value) in content.iter_mut() {
        match (key.as_str(), value) {
            ("users" | "events" | "notifications", Value::Object(map)) => {
                map.values_mut().for_each(fix);
            }
            (_, value) => fix(value),
        }
    }
}

/// A power level of `content` (`key` at the top level), with the spec's default.
fn level(content: &Map<String, Value>, key: &str, default: i64) -> i64 {
    content.get(key).and_then(Value::as_i64).unwrap_or(default)
}

/// The replacement room's first power levels, and the ones to restore after the copied state
/// when the first had to raise the upgrading user.
///
/// With creators (`new_privileged`) the old levels are kept less the creators' entries (the auth
/// rules refuse them there), and the tombstone level is raised to 150 when the old room had no
/// creators (`old_privileged` false). Without, the upgrading user is raised to what sending the
/// copied state and bans needs, and the old levels are restored after, unless the old room gave
/// them that power by being a creator, or had no power levels: then they keep it.
fn replacement_power_levels(
    old: Option<&Map<String, Value>>,
    user: &UserId,
    additional_creators: &[OwnedUserId],
    old_privileged: bool,
    new_privileged: bool,
) -> (Map<String, Value>, Option<Map<String, Value>>) {
    let mut content = old.cloned().unwrap_or_default();
    if new_privileged {
        if let Some(Value::Object(users)) = content.get_mut("users") {
            users.remove(user.as_str());
            for creator in additional_creators {
                users.remove(creator.as_str());
            }
        }
        if !old_privileged {
            let state_default = level(&content, "state_default", 50);
            let events = content
                .entry("events")
                .or_insert_with(|| json!({}))
                .as_object_mut();
            if let Some(events) = events {
                let current = events
                    .get("m.room.tombstone")
                    .and_then(Value::as_i64)
                    .unwrap_or(state_default);
                events.insert(
                    "m.room.tombstone".to_owned(),
                    json!(current.max(PRIVILEGED_TOMBSTONE_LEVEL)),
                );
            }
        }
        return (content, None);
    }
    let events_max = content
        .get("events")
        .and_then(Value::as_object)
        .map(|events| events.values().filter_map(Value::as_i64).max().unwrap_or(0))
        .unwrap_or(0);
    let needed = level(&content, "state_default", 50)
        .max(level(&content, "ban", 50))
        .max(events_max)
        // A room without power levels: its creator had 100.
        .max(if old.is_none() { 100 } else { 0 });
    let users_default = level(&content, "users_default", 0);
    let current = content
        .get("users")
        .and_then(|users| users.get(user.as_str()))
        .and_then(Value::as_i64)
        .unwrap_or(users_default);
    if current >= needed {
        return (content, None);
    }
    let restored = content.clone();
    let users = content
        .entry("users")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    match users {
        Some(users) => {
            users.insert(user.to_string(), json!(needed));
        }
        None => {
            content.insert("users".to_owned(), json!({user.as_str(): needed}));
        }
    }
    let restore = old.is_some() && !old_privileged;
    (content, restore.then_some(restored))
}

/// The spec's lock-down of the old room: `events_default` and `invite` raised to the greater of
/// 50 and `users_default + 1`. Returns whether anything changed.
fn lock_down(content: &mut Map<String, Value>) -> bool {
    let restricted = 50.max(level(content, "users_default", 0).saturating_add(1));
    let mut changed = false;
    for key in ["events_default", "invite"] {
        if level(content, key, 0) < restricted {
            content.insert(key.to_owned(), json!(restricted));
            changed = true;
        }
    }
    changed
}

/// Splits a canonical alias content between the aliases that moved to the replacement room
/// (`carried`, in the same shape) and the rest, which stay in the old room's (`kept`).
fn split_canonical_alias(
    content: &Map<String, Value>,
    moved: &[String],
) -> (Map<String, Value>, Map<String, Value>) {
    let mut kept = content.clone();
    let mut carried = Map::new();
    let did_move = |alias: &Value| alias.as_str().is_some_and(|a| moved.iter().any(|m| m == a));
    if let Some(alias) = content.get("alias")
        && did_move(alias)
    {
        kept.remove("alias");
        carried.insert("alias".to_owned(), alias.clone());
    }
    if let Some(Value::Array(alt)) = content.get("alt_aliases") {
        let (moving, staying): (Vec<Value>, Vec<Value>) =
            alt.iter().cloned().partition(|a| did_move(a));
        if !moving.is_empty() {
            carried.insert("alt_aliases".to_owned(), Value::Array(moving));
            if staying.is_empty() {
                kept.remove("alt_aliases");
            } else {
                kept.insert("alt_aliases".to_owned(), Value::Array(staying));
            }
        }
    }
    (kept, carried)
}

#[cfg(test)]
mod tests {
    use ruma::{owned_user_id, user_id};

    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn v12_replacements_drop_creators_and_raise_the_tombstone() {
        let old = map(json!({"users": {"@a:x": 100, "@b:x": 100, "@c:x": 50}}));
        let (first, restore) = replacement_power_levels(
            Some(&old),
            user_id!("@a:x"),
            &[owned_user_id!("@b:x")],
            false,
            true,
        );
        assert_eq!(first["users"], json!({"@c:x": 50}));
        assert_eq!(first["events"]["m.room.tombstone"], 150);
        assert!(restore.is_none());
        // Between two rooms with creators, the old tombstone level stands.
        let old = map(json!({"users": {}, "events": {"m.room.tombstone": 120}}));
        let (first, _) = replacement_power_levels(Some(&old), user_id!("@a:x"), &[], true, true);
        assert_eq!(first["events"]["m.room.tombstone"], 120);
    }

    #[test]
    fn older_replacements_raise_the_upgrader_for_the_copy_then_restore() {
        let old = map(
            json!({"users": {"@a:x": 50}, "events": {"m.room.tombstone": 50,
                             "m.room.power_levels": 100}, "state_default": 50}),
        );
        let (first, restore) =
            replacement_power_levels(Some(&old), user_id!("@a:x"), &[], false, false);
        assert_eq!(first["users"]["@a:x"], 100);
        assert_eq!(restore, Some(old.clone()));
        // Enough power already: one power levels event, the old one.
        let old = map(json!({"users": {"@a:x": 100}}));
        let (first, restore) =
            replacement_power_levels(Some(&old), user_id!("@a:x"), &[], false, false);
        assert_eq!(first, old);
        assert!(restore.is_none());
    }

    #[test]
    fn lock_down_raises_events_default_and_invite() {
        let mut content = map(json!({"users_default": 0, "events_default": 0, "invite": 0}));
        assert!(lock_down(&mut content));
        assert_eq!(content["events_default"], 50);
        assert_eq!(content["invite"], 50);
        assert!(!lock_down(&mut content), "already locked down");
        let mut content = map(json!({"users_default": 70, "invite": 100}));
        assert!(lock_down(&mut content));
        assert_eq!(content["events_default"], 71);
        assert_eq!(content["invite"], 100, "never lowered");
    }

    #[test]
    fn canonical_alias_splits_by_moved_aliases() {
        let content = map(json!({"alias": "#a:x", "alt_aliases": ["#a:x", "#b:x", "#r:y"]}));
        let (kept, carried) =
            split_canonical_alias(&content, &["#a:x".to_owned(), "#b:x".to_owned()]);
        assert_eq!(Value::Object(kept), json!({"alt_aliases": ["#r:y"]}));
        assert_eq!(
            Value::Object(carried),
            json!({"alias": "#a:x", "alt_aliases": ["#a:x", "#b:x"]})
        );
    }

    #[test]
    fn string_levels_become_integers() {
        let mut content =
            map(json!({"ban": "50", "users": {"@a:x": " 100 "}, "events": {"m.x": 5}}));
        integer_levels(&mut content);
        assert_eq!(
            Value::Object(content),
            json!({"ban": 50, "users": {"@a:x": 100}, "events": {"m.x": 5}})
        );
    }
}

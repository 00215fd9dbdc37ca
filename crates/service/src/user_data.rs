//! Per-user data that needs no room: filters, account data (global and per room), room tags
//! (the `m.tag` room account data), push rules (the `m.push_rules` global account data), and
//! the server's capabilities. Every write to account data takes a position on the account data
//! stream so that `/sync` can hand out what changed since a token.

use myelin_store::{AccountDataRow, Store};
use ruma::{
    OwnedRoomId, RoomId, UserId,
    api::client::{filter::FilterDefinition, push::PushRule},
    events::tag::{TagInfo, TagName, Tags},
    push::{
        Action, ConditionalPushRule, ConditionalPushRuleInit, HighlightTweakValue,
        InsertPushRuleError, NewConditionalPushRule, NewPushRule, NewSimplePushRule,
        PatternedPushRuleInit, PushCondition, RemovePushRuleError, RuleKind, Ruleset,
        SenderNotificationPermissionConditionData, SoundTweakValue, Tweak,
    },
};
use serde_json::value::RawValue;

use crate::{Error, Result, accounts::AuthedUser};

/// Account data types the server manages: clients set them through their own APIs.
const SERVER_MANAGED_GLOBAL: &[&str] = &["m.push_rules"];
const SERVER_MANAGED_ROOM: &[&str] = &["m.fully_read"];
/// The room account data type that holds a room's tags.
const TAG_TYPE: &str = "m.tag";
/// The global account data type that holds the user's push rules.
const PUSH_RULES_TYPE: &str = "m.push_rules";
/// The global account data type that lists the user's direct chats.
const DIRECT_TYPE: &str = "m.direct";

/// The per-user data area.
#[derive(Debug)]
pub struct UserData {
    store: Store,
    /// Serialises read-modify-write updates (tags, push rules), so two concurrent changes
    /// cannot lose one another. These writes are rare; one lock for the server is enough.
    rmw: tokio::sync::Mutex<()>,
    /// Wakes waiting syncs after every account data write.
    notify: crate::notifier::Notifier,
}

/// The push rule content stored as `m.push_rules` account data.
#[derive(serde::Serialize, serde::Deserialize)]
struct PushRulesContent {
    global: Ruleset,
}

/// Only the user an access token belongs to may read or write that user's data.
fn ensure_self(user: &AuthedUser, target: &UserId, what: &str) -> Result<()> {
    if user.user_id != target {
        return Err(Error::Forbidden(format!("Cannot {what} for other users")));
    }
    Ok(())
}

/// Account data content must be a JSON object.
fn object_text(content: &RawValue) -> Result<&str> {
    let text = content.get();
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => Ok(text),
        _ => Err(Error::BadJson("Content must be a JSON object".to_owned())),
    }
}

fn raw(text: String) -> Result<Box<RawValue>> {
    RawValue::from_string(text).map_err(|err| Error::Internal(format!("stored JSON: {err}")))
}

impl UserData {
    pub fn new(store: Store, notify: crate::notifier::Notifier) -> Self {
        UserData {
            store,
            rmw: tokio::sync::Mutex::new(()),
            notify,
        }
    }

    // ----- filters -----

    /// Stores a filter for the user and returns its id.
    pub async fn create_filter(
        &self,
        user: &AuthedUser,
        target: &UserId,
        filter: &FilterDefinition,
    ) -> Result<String> {
        ensure_self(user, target, "create filters")?;
        let json = serde_json::to_string(filter)
            .map_err(|err| Error::Internal(format!("serialising a filter: {err}")))?;
        crate::limits::at_most(
            "The filter (bytes)",
            json.len(),
            crate::limits::MAX_FILTER_BYTES,
        )?;
        let id = self.store.create_filter(target.as_str(), &json).await?;
        Ok(id.to_string())
    }

    /// One of the user's filters. An id the user does not have is `M_NOT_FOUND`.
    pub async fn filter(
        &self,
        user: &AuthedUser,
        target: &UserId,
        filter_id: &str,
    ) -> Result<FilterDefinition> {
        ensure_self(user, target, "get filters")?;
        let not_found = || Error::NotFound("No such filter".to_owned());
        let id: i64 = filter_id.parse().map_err(|_| not_found())?;
        let json = self
            .store
            .filter(target.as_str(), id)
            .await?
            .ok_or_else(not_found)?;
        serde_json::from_str(&json).map_err(|err| Error::Internal(format!("stored filter: {err}")))
    }

    // ----- account data -----

    /// Sets account data (global when `room_id` is `None`) and returns its stream position.
    /// Types the server manages (`m.push_rules`, room `m.fully_read`) are refused with 405.
    pub async fn set_account_data(
        &self,
        user: &AuthedUser,
        target: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
        content: &RawValue,
    ) -> Result<i64> {
        ensure_self(user, target, "add account data")?;
        let managed = match room_id {
            None => SERVER_MANAGED_GLOBAL,
            Some(_) => SERVER_MANAGED_ROOM,
        };
        if managed.contains(&data_type) {
            return Err(Error::ServerManagedAccountData(format!(
                "Cannot set {data_type} through this API"
            )));
        }
        let text = object_text(content)?;
        crate::limits::at_most(
            "The account data (bytes)",
            text.len(),
            crate::limits::MAX_ACCOUNT_DATA_BYTES,
        )?;
        self.write_account_data(target, room_id.map(RoomId::as_str), data_type, text)
            .await
    }

    /// Sets the server-managed `m.fully_read` marker of a room (read markers and receipts).
    pub(crate) async fn set_fully_read(
        &self,
        user_id: &UserId,
        room_id: &str,
        event_id: &str,
    ) -> Result<i64> {
        let text = serde_json::json!({ "event_id": event_id }).to_string();
        self.write_account_data(user_id, Some(room_id), "m.fully_read", &text)
            .await
    }

    /// Stores account data and wakes the syncs waiting for it.
    async fn write_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&str>,
        data_type: &str,
        text: &str,
    ) -> Result<i64> {
        let position = self
            .store
            .set_account_data(user_id.as_str(), room_id, data_type, text)
            .await?;
        self.notify.notify();
        Ok(position)
    }

    /// The content of one account data entry; `M_NOT_FOUND` when there is none.
    pub async fn account_data(
        &self,
        user: &AuthedUser,
        target: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
    ) -> Result<Box<RawValue>> {
        ensure_self(user, target, "get account data")?;
        let text = match (room_id, data_type) {
            // Push rules always exist: the defaults until the user changes them.
            (None, PUSH_RULES_TYPE) => push_rules_json(self.push_rules(target).await?)?,
            _ => self
                .store
                .account_data(target.as_str(), room_id.map(RoomId::as_str), data_type)
                .await?
                .ok_or_else(|| Error::NotFound("Account data not found".to_owned()))?,
        };
        raw(text)
    }

    /// The user's account data written after stream position `since`, oldest first, each entry
    /// once with its latest content: what `/sync` returns for a `since` token (0 for an initial
    /// sync). `m.push_rules` always carries the full ruleset, and an initial sync gets it (at
    /// position 0) even before the user has changed a rule.
    pub async fn account_data_since(
        &self,
        user_id: &UserId,
        since: i64,
    ) -> Result<Vec<AccountDataRow>> {
        let mut rows = self
            .store
            .account_data_since(user_id.as_str(), since)
            .await?;
        let push_rules = rows
            .iter_mut()
            .find(|row| row.room_id.is_none() && row.data_type == PUSH_RULES_TYPE);
        match push_rules {
            Some(row) => {
                row.content = push_rules_json(merged_push_rules(user_id, Some(&row.content))?)?
            }
            None if since <= 0 => rows.insert(
                0,
                AccountDataRow {
                    room_id: None,
                    data_type: PUSH_RULES_TYPE.to_owned(),
                    content: push_rules_json(server_default_push_rules(user_id))?,
                    stream_position: 0,
                },
            ),
            None => {}
        }
        Ok(rows)
    }

    // ----- room tags -----

    async fn stored_tags(&self, user_id: &UserId, room_id: &RoomId) -> Result<Tags> {
        let Some(text) = self
            .store
            .account_data(user_id.as_str(), Some(room_id.as_str()), TAG_TYPE)
            .await?
        else {
            return Ok(Tags::new());
        };
        #[derive(serde::Deserialize)]
        struct TagContent {
            #[serde(default)]
            tags: Tags,
        }
        // Tags written by an older or buggier client must not make the room unreadable.
        Ok(serde_json::from_str::<TagContent>(&text)
            .map(|c| c.tags)
            .unwrap_or_default())
    }

    async fn store_tags(&self, user_id: &UserId, room_id: &RoomId, tags: &Tags) -> Result<i64> {
        let text = serde_json::to_string(&serde_json::json!({ "tags": tags }))
            .map_err(|err| Error::Internal(err.to_string()))?;
        self.write_account_data(user_id, Some(room_id.as_str()), TAG_TYPE, &text)
            .await
    }

    /// The user's tags on a room (empty when none).
    pub async fn tags(&self, user: &AuthedUser, target: &UserId, room_id: &RoomId) -> Result<Tags> {
        ensure_self(user, target, "get tags")?;
        self.stored_tags(target, room_id).await
    }

    /// Adds or replaces one tag on a room.
    pub async fn set_tag(
        &self,
        user: &AuthedUser,
        target: &UserId,
        room_id: &RoomId,
        tag: &str,
        info: TagInfo,
    ) -> Result<()> {
        ensure_self(user, target, "add tags")?;
        let _guard = self.rmw.lock().await;
        let mut tags = self.stored_tags(target, room_id).await?;
        tags.insert(TagName::from(tag), info);
        self.store_tags(target, room_id, &tags).await?;
        Ok(())
    }

    /// Removes one tag from a room; removing a tag that is not there succeeds.
    pub async fn delete_tag(
        &self,
        user: &AuthedUser,
        target: &UserId,
        room_id: &RoomId,
        tag: &str,
    ) -> Result<()> {
        ensure_self(user, target, "remove tags")?;
        let _guard = self.rmw.lock().await;
        let mut tags = self.stored_tags(target, room_id).await?;
        if tags.remove(&TagName::from(tag)).is_some() {
            self.store_tags(target, room_id, &tags).await?;
        }
        Ok(())
    }

    // ----- room upgrades -----

    /// When `user_id` joins `new_room`, the replacement of `old_room` (its create event names
    /// `old_room` as predecessor), the user's own settings for the old room follow them, as the
    /// spec's room upgrade module asks: their tags on it, its place among their direct chats
    /// (`m.direct`), and their push rules that name it (the room rule whose id it is, and
    /// override/underride rules with a `room_id` condition on it). What the user already set for
    /// the new room is kept. Each of the three is one account data write, so a crash between
    /// them can carry over some and not the others; a later join does not retry.
    pub(crate) async fn carry_over_to_replacement(
        &self,
        user_id: &UserId,
        old_room: &RoomId,
        new_room: &RoomId,
    ) -> Result<()> {
        let _guard = self.rmw.lock().await;
        // Tags.
        let old_tags = self.stored_tags(user_id, old_room).await?;
        if !old_tags.is_empty() {
            let mut tags = self.stored_tags(user_id, new_room).await?;
            let before = tags.len();
            for (name, info) in old_tags {
                tags.entry(name).or_insert(info);
            }
            if tags.len() != before {
                self.store_tags(user_id, new_room, &tags).await?;
            }
        }
        // Direct chats.
        if let Some(text) = self
            .store
            .account_data(user_id.as_str(), None, DIRECT_TYPE)
            .await?
            && let Ok(serde_json::Value::Object(mut direct)) =
                serde_json::from_str::<serde_json::Value>(&text)
        {
            let mut changed = false;
            for rooms in direct.values_mut() {
                if let serde_json::Value::Array(rooms) = rooms
                    && rooms.iter().any(|r| r.as_str() == Some(old_room.as_str()))
                    && !rooms.iter().any(|r| r.as_str() == Some(new_room.as_str()))
                {
                    rooms.push(serde_json::Value::String(new_room.to_string()));
                    changed = true;
                }
            }
            if changed {
                let text = serde_json::Value::Object(direct).to_string();
                self.write_account_data(user_id, None, DIRECT_TYPE, &text)
                    .await?;
            }
        }
        // Push rules.
        let mut rules = self.push_rules(user_id).await?;
        if copy_room_push_rules(&mut rules, old_room, new_room) {
            let text = push_rules_json(rules)?;
            self.write_account_data(user_id, None, PUSH_RULES_TYPE, &text)
                .await?;
        }
        Ok(())
    }

    // ----- push rules -----

    /// The user's push rules: the stored ruleset, or the spec's defaults before the first
    /// change. Default rules added to the spec since the user's last change are merged in.
    pub async fn push_rules(&self, user_id: &UserId) -> Result<Ruleset> {
        let stored = self
            .store
            .account_data(user_id.as_str(), None, PUSH_RULES_TYPE)
            .await?;
        merged_push_rules(user_id, stored.as_deref())
    }

    /// Loads the user's rules, applies `change`, and stores the result as `m.push_rules`.
    async fn change_push_rules<T>(
        &self,
        user_id: &UserId,
        change: impl FnOnce(&mut Ruleset) -> Result<T>,
    ) -> Result<T> {
        let _guard = self.rmw.lock().await;
        let mut rules = self.push_rules(user_id).await?;
        let out = change(&mut rules)?;
        let text = push_rules_json(rules)?;
        self.write_account_data(user_id, None, PUSH_RULES_TYPE, &text)
            .await?;
        Ok(out)
    }

    /// One push rule.
    pub async fn push_rule(
        &self,
        user_id: &UserId,
        kind: RuleKind,
        rule_id: &str,
    ) -> Result<PushRule> {
        let rules = self.push_rules(user_id).await?;
        let rule = rules.get(kind, rule_id).ok_or_else(rule_not_found)?;
        Ok(rule.into())
    }

    /// Adds or replaces a user-defined push rule, placed by `before`/`after`.
    pub async fn set_push_rule(
        &self,
        user_id: &UserId,
        rule: NewPushRule,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<()> {
        // The pattern, conditions and actions are the client's: their size is capped as one.
        let json = match &rule {
            NewPushRule::Override(r) | NewPushRule::Underride(r) => serde_json::to_string(r),
            NewPushRule::Content(r) => serde_json::to_string(r),
            NewPushRule::Room(r) => serde_json::to_string(r),
            NewPushRule::Sender(r) => serde_json::to_string(r),
            other => Ok(other.rule_id().to_owned()),
        }
        .map_err(|err| Error::Internal(format!("serialising a push rule: {err}")))?;
        crate::limits::at_most(
            "The push rule (bytes)",
            json.len(),
            crate::limits::MAX_PUSH_RULE_BYTES,
        )?;
        self.change_push_rules(user_id, |rules| {
            rules.insert(rule, after, before).map_err(|err| match err {
                InsertPushRuleError::UnknownRuleId => Error::Unknown(format!(
                    "before/after rule not found: {}",
                    before.or(after).unwrap_or_default()
                )),
                other => Error::InvalidParam(other.to_string()),
            })?;
            crate::limits::at_most(
                "The number of your push rules",
                rules.iter().filter(|r| !r.is_server_default()).count(),
                crate::limits::MAX_USER_PUSH_RULES,
            )
        })
        .await
    }

    /// Deletes a user-defined push rule. Server-default rules cannot be deleted.
    pub async fn delete_push_rule(
        &self,
        user_id: &UserId,
        kind: RuleKind,
        rule_id: &str,
    ) -> Result<()> {
        self.change_push_rules(user_id, |rules| {
            rules.remove(kind, rule_id).map_err(|err| match err {
                RemovePushRuleError::ServerDefault => {
                    Error::InvalidParam("Cannot delete a server-default push rule".to_owned())
                }
                _ => rule_not_found(),
            })
        })
        .await
    }

    /// Enables or disables a push rule (server-default rules included).
    pub async fn set_push_rule_enabled(
        &self,
        user_id: &UserId,
        kind: RuleKind,
        rule_id: &str,
        enabled: bool,
    ) -> Result<()> {
        self.change_push_rules(user_id, |rules| {
            rules
                .set_enabled(kind, rule_id, enabled)
                .map_err(|_| rule_not_found())
        })
        .await
    }

    /// Replaces a push rule's actions (server-default rules included).
    pub async fn set_push_rule_actions(
        &self,
        user_id: &UserId,
        kind: RuleKind,
        rule_id: &str,
        actions: Vec<Action>,
    ) -> Result<()> {
        self.change_push_rules(user_id, |rules| {
            rules
                .set_actions(kind, rule_id, actions)
                .map_err(|_| rule_not_found())
        })
        .await
    }
}

/// The user's rules from the stored `m.push_rules` content (the defaults when there is none),
/// with any default rule the stored set lacks merged in.
pub(crate) fn merged_push_rules(user_id: &UserId, stored: Option<&str>) -> Result<Ruleset> {
    let defaults = server_default_push_rules(user_id);
    let Some(text) = stored else {
        return Ok(defaults);
    };
    let mut rules = serde_json::from_str::<PushRulesContent>(text)
        .map_err(|err| Error::Internal(format!("stored push rules: {err}")))?
        .global;
    merge_missing_defaults(&mut rules, defaults);
    Ok(rules)
}

/// Copies the user-defined rules of `rules` that name `old_room` into rules for `new_room`:
/// the room rule whose id is the old room, and override/underride rules with an `event_match`
/// on `room_id` for it (their id, when it holds the old room's id, gets the new one; a rule
/// whose id does not is left where it is, as a copy would need an id the user never chose).
/// Rules `new_room` already has are kept, and the user's rule limit is respected. Returns
/// whether anything was added.
fn copy_room_push_rules(rules: &mut Ruleset, old_room: &RoomId, new_room: &RoomId) -> bool {
    let mut added: Vec<(NewPushRule, bool)> = Vec::new();
    if let Some(rule) = rules.room.get(old_room.as_str())
        && !rule.default
        && !rules.room.contains(new_room.as_str())
    {
        added.push((
            NewPushRule::Room(NewSimplePushRule::new(
                OwnedRoomId::from(new_room),
                rule.actions.clone(),
            )),
            rule.enabled,
        ));
    }
    let names_old_room = |rule: &ConditionalPushRule| {
        !rule.default
            && rule.conditions.iter().any(|c| {
                matches!(c, PushCondition::EventMatch(m)
                    if m.key == "room_id" && m.pattern == old_room.as_str())
            })
    };
    let copy = |rule: &ConditionalPushRule| {
        if !names_old_room(rule) || !rule.rule_id.contains(old_room.as_str()) {
            return None;
        }
        let rule_id = rule.rule_id.replace(old_room.as_str(), new_room.as_str());
        let conditions = rule
            .conditions
            .iter()
            .map(|c| match c {
                PushCondition::EventMatch(m)
                    if m.key == "room_id" && m.pattern == old_room.as_str() =>
                {
                    let mut m = m.clone();
                    m.pattern = new_room.to_string();
                    PushCondition::EventMatch(m)
                }
                other => other.clone(),
            })
            .collect();
        Some((
            NewConditionalPushRule::new(rule_id, conditions, rule.actions.clone()),
            rule.enabled,
        ))
    };
    for rule in &rules.override_ {
        if let Some((new, enabled)) = copy(rule)
            && !rules.override_.contains(new.rule_id.as_str())
        {
            added.push((NewPushRule::Override(new), enabled));
        }
    }
    for rule in &rules.underride {
        if let Some((new, enabled)) = copy(rule)
            && !rules.underride.contains(new.rule_id.as_str())
        {
            added.push((NewPushRule::Underride(new), enabled));
        }
    }
    let mut changed = false;
    for (rule, enabled) in added {
        let user_rules = rules.iter().filter(|r| !r.is_server_default()).count();
        if user_rules >= crate::limits::MAX_USER_PUSH_RULES {
            break;
        }
        let kind = rule.kind();
        let rule_id = rule.rule_id().to_owned();
        if rules.insert(rule, None, None).is_ok() {
            if !enabled {
                let _ = rules.set_enabled(kind, &rule_id, false);
            }
            changed = true;
        }
    }
    changed
}

/// The `m.push_rules` account data content for a ruleset.
fn push_rules_json(global: Ruleset) -> Result<String> {
    serde_json::to_string(&PushRulesContent { global })
        .map_err(|err| Error::Internal(format!("serialising push rules: {err}")))
}

fn rule_not_found() -> Error {
    Error::NotFound("The push rule was not found".to_owned())
}

/// The server-default push rules of the spec version this server speaks (v1.12, the newest it
/// advertises): ruma's defaults, which follow the latest spec, plus the legacy mention rules
/// that spec still lists (deprecated since v1.7, removed in v1.17 by MSC4210):
/// `.m.rule.contains_display_name` and `.m.rule.roomnotif` among the override rules, right
/// after `.m.rule.is_user_mention` and `.m.rule.is_room_mention`, and the content rule
/// `.m.rule.contains_user_name`. Synapse ships them too. They only apply to an event without
/// `m.mentions` (MSC3952; the evaluator knows them by id), so a client that sends intentional
/// mentions never triggers them, and one that does not still gets its users highlighted.
pub(crate) fn server_default_push_rules(user_id: &UserId) -> Ruleset {
    let mut rules = Ruleset::server_default(user_id);
    let mention_actions = || {
        vec![
            Action::Notify,
            Action::SetTweak(Tweak::Sound(SoundTweakValue::Default)),
            Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes)),
        ]
    };
    let contains_display_name: ConditionalPushRule = ConditionalPushRuleInit {
        actions: mention_actions(),
        default: true,
        enabled: true,
        rule_id: ".m.rule.contains_display_name".to_owned(),
        #[allow(deprecated)] // the condition of the deprecated rule, in the spec it speaks
        conditions: vec![PushCondition::ContainsDisplayName],
    }
    .into();
    let roomnotif: ConditionalPushRule = ConditionalPushRuleInit {
        actions: vec![
            Action::Notify,
            Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes)),
        ],
        default: true,
        enabled: true,
        rule_id: ".m.rule.roomnotif".to_owned(),
        conditions: vec![
            PushCondition::EventMatch(ruma::push::EventMatchConditionData::new(
                "content.body".to_owned(),
                "@room".to_owned(),
            )),
            PushCondition::SenderNotificationPermission(
                SenderNotificationPermissionConditionData::new(
                    ruma::power_levels::NotificationPowerLevelsKey::Room,
                ),
            ),
        ],
    }
    .into();
    for (after, rule) in [
        (".m.rule.is_user_mention", contains_display_name),
        (".m.rule.is_room_mention", roomnotif),
    ] {
        let at = rules
            .override_
            .get_index_of(after)
            .map_or(rules.override_.len(), |i| i + 1);
        rules.override_.shift_insert(at, rule);
    }
    rules.content.insert(
        PatternedPushRuleInit {
            actions: mention_actions(),
            default: true,
            enabled: true,
            rule_id: ".m.rule.contains_user_name".to_owned(),
            pattern: user_id.localpart().to_owned(),
        }
        .into(),
    );
    rules
}

/// Adds to `stored` every default rule it lacks, where the defaults place it: after the
/// nearest default rule before it that `stored` has (or before the nearest one after it),
/// so that the server-default rules keep the spec's order behind the user's own rules of
/// their kind; the master rule goes first.
fn merge_missing_defaults(stored: &mut Ruleset, defaults: Ruleset) {
    macro_rules! merge {
        ($field:ident) => {
            let order: Vec<String> = defaults
                .$field
                .iter()
                .map(|r| r.rule_id.to_string())
                .collect();
            for (i, rule) in defaults.$field.into_iter().enumerate() {
                if stored.$field.contains(rule.rule_id.as_str()) {
                    continue;
                }
                let after_previous = order[..i]
                    .iter()
                    .rev()
                    .find_map(|id| stored.$field.get_index_of(id.as_str()))
                    .map(|index| index + 1);
                let before_next = || {
                    order[i + 1..]
                        .iter()
                        .find_map(|id| stored.$field.get_index_of(id.as_str()))
                };
                let at = match after_previous {
                    Some(at) => at,
                    None if order[i] == ".m.rule.master" => 0,
                    None => before_next().unwrap_or(stored.$field.len()),
                };
                stored.$field.shift_insert(at, rule);
            }
        };
    }
    merge!(override_);
    merge!(content);
    merge!(room);
    merge!(sender);
    merge!(underride);
}

/// The room versions for `m.room_versions`: the default for new rooms (`default`) and every
/// supported version with whether it is stable. Account-key rooms are listed only with
/// `experimental.msc4243` (`account_keys`).
pub fn room_versions(
    default: &'static myelin_room_version::version::RoomVersion,
    account_keys: bool,
) -> (&'static str, Vec<(&'static str, bool)>) {
    use myelin_room_version::version::{RoomVersion, Stability};
    let available = RoomVersion::all()
        .iter()
        .filter(|v| account_keys || !v.uses_account_keys())
        .map(|v| (v.id(), v.stability() == Stability::Stable))
        .collect();
    (default.id(), available)
}

#[cfg(test)]
mod tests {
    use myelin_store::{
        Store, StoreOptions, UserRow,
        test_support::{TestDatabase, test_backends},
    };
    use ruma::{owned_room_id, owned_user_id};

    use super::*;

    fn authed(user_id: &UserId) -> AuthedUser {
        AuthedUser {
            user_id: user_id.to_owned(),
            device_id: "DEVICE".into(),
            is_admin: false,
            token_hash: Vec::new(),
        }
    }

    #[tokio::test]
    async fn account_data_since_is_what_sync_needs() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let alice = owned_user_id!("@alice:test");
            store
                .create_user(&UserRow {
                    user_id: alice.to_string(),
                    localpart: "alice".to_owned(),
                    password_hash: None,
                    is_admin: false,
                    created_ts: 0,
                    deactivated_ts: None,
                })
                .await
                .unwrap();
            let data = UserData::new(store.clone(), crate::notifier::Notifier::default());
            let me = authed(&alice);

            // Initial sync: the default push rules, before any write.
            let initial = data.account_data_since(&alice, 0).await.unwrap();
            assert_eq!(initial.len(), 1, "{kind:?}");
            assert_eq!(initial[0].data_type, "m.push_rules");
            let content: serde_json::Value = serde_json::from_str(&initial[0].content).unwrap();
            assert_eq!(
                content["global"]["override"][0]["rule_id"],
                ".m.rule.master"
            );

            let content = RawValue::from_string(r#"{"k":1}"#.to_owned()).unwrap();
            let p1 = data
                .set_account_data(&me, &alice, None, "org.example", &content)
                .await
                .unwrap();
            let room = owned_room_id!("!r:test");
            data.set_tag(&me, &alice, &room, "u.work", TagInfo::new())
                .await
                .unwrap();
            assert_eq!(
                data.store.account_data_stream_position().await.unwrap(),
                p1 + 1
            );

            // Incremental: only what changed, and no push rules when they did not change.
            let since = data.account_data_since(&alice, p1).await.unwrap();
            assert_eq!(since.len(), 1);
            assert_eq!(since[0].room_id.as_deref(), Some("!r:test"));
            assert_eq!(since[0].data_type, "m.tag");

            // A rule change shows up with the whole ruleset.
            data.set_push_rule_enabled(&alice, RuleKind::Override, ".m.rule.master", true)
                .await
                .unwrap();
            let since = data.account_data_since(&alice, p1 + 1).await.unwrap();
            assert_eq!(since.len(), 1);
            let content: serde_json::Value = serde_json::from_str(&since[0].content).unwrap();
            assert_eq!(content["global"]["override"][0]["enabled"], true);
            assert!(content["global"]["underride"].as_array().unwrap().len() > 1);
            store.close().await;
        }
    }

    #[test]
    fn room_push_rules_are_copied_to_a_replacement_once() {
        let alice = owned_user_id!("@alice:test");
        let old = owned_room_id!("!old:test");
        let new = owned_room_id!("!new:test");
        let mut rules = Ruleset::server_default(&alice);
        rules
            .insert(
                NewPushRule::Room(NewSimplePushRule::new(old.clone(), vec![])),
                None,
                None,
            )
            .unwrap();
        let on_old = |id: &str| {
            NewConditionalPushRule::new(
                id.to_owned(),
                vec![PushCondition::EventMatch(
                    ruma::push::EventMatchConditionData::new("room_id".to_owned(), old.to_string()),
                )],
                vec![],
            )
        };
        rules
            .insert(NewPushRule::Override(on_old(old.as_str())), None, None)
            .unwrap();
        rules
            .set_enabled(RuleKind::Override, old.as_str(), false)
            .unwrap();
        // A rule on the room under an id that does not name it stays where it is.
        rules
            .insert(NewPushRule::Underride(on_old("mine")), None, None)
            .unwrap();
        let before = rules.iter().count();

        assert!(copy_room_push_rules(&mut rules, &old, &new));
        assert_eq!(rules.iter().count(), before + 2);
        assert!(rules.room.contains(new.as_str()));
        let copied = rules.override_.get(new.as_str()).unwrap();
        assert!(!copied.enabled, "the rule's state follows it");
        assert!(matches!(&copied.conditions[0],
            PushCondition::EventMatch(m) if m.pattern == new.as_str()));
        assert!(
            rules.room.contains(old.as_str()),
            "the old room keeps its rules"
        );
        assert!(
            !copy_room_push_rules(&mut rules, &old, &new),
            "nothing twice"
        );
    }

    #[test]
    fn missing_default_rules_are_merged_back() {
        let alice = owned_user_id!("@alice:test");
        let mut rules = server_default_push_rules(&alice);
        rules.override_.shift_remove(".m.rule.master");
        rules.underride.shift_remove(".m.rule.message");
        rules
            .set_enabled(RuleKind::Override, ".m.rule.suppress_notices", false)
            .unwrap();
        let merged = merged_push_rules(&alice, Some(&push_rules_json(rules).unwrap())).unwrap();
        let defaults = server_default_push_rules(&alice);
        assert_eq!(merged.override_.len(), defaults.override_.len());
        assert_eq!(merged.override_[0].rule_id, ".m.rule.master");
        assert!(merged.underride.contains(".m.rule.message"));
        assert!(
            !merged
                .override_
                .get(".m.rule.suppress_notices")
                .unwrap()
                .enabled,
            "the user's change is kept"
        );
    }

    fn rule_ids<'a>(rules: impl Iterator<Item = &'a ConditionalPushRule>) -> Vec<&'a str> {
        rules.map(|r| r.rule_id.as_str()).collect()
    }

    #[test]
    fn the_defaults_are_those_of_the_spec_version_spoken() {
        // v1.12's server-default rules, in its order: the legacy mention rules included.
        let alice = owned_user_id!("@alice:test");
        let rules = server_default_push_rules(&alice);
        assert_eq!(
            rule_ids(rules.override_.iter()),
            [
                ".m.rule.master",
                ".m.rule.suppress_notices",
                ".m.rule.invite_for_me",
                ".m.rule.member_event",
                ".m.rule.is_user_mention",
                ".m.rule.contains_display_name",
                ".m.rule.is_room_mention",
                ".m.rule.roomnotif",
                ".m.rule.tombstone",
                ".m.rule.reaction",
                ".m.rule.room.server_acl",
                ".m.rule.suppress_edits",
            ]
        );
        let json = serde_json::to_value(&rules).unwrap();
        assert_eq!(
            json["content"],
            serde_json::json!([{
                "rule_id": ".m.rule.contains_user_name",
                "default": true,
                "enabled": true,
                "pattern": "alice",
                "actions": ["notify", {"set_tweak": "sound", "value": "default"},
                    {"set_tweak": "highlight"}],
            }])
        );
        let override_rule = |id: &str| {
            json["override"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["rule_id"] == id)
                .unwrap()
                .clone()
        };
        assert_eq!(
            override_rule(".m.rule.contains_display_name"),
            serde_json::json!({
                "rule_id": ".m.rule.contains_display_name",
                "default": true,
                "enabled": true,
                "conditions": [{"kind": "contains_display_name"}],
                "actions": ["notify", {"set_tweak": "sound", "value": "default"},
                    {"set_tweak": "highlight"}],
            })
        );
        assert_eq!(
            override_rule(".m.rule.roomnotif"),
            serde_json::json!({
                "rule_id": ".m.rule.roomnotif",
                "default": true,
                "enabled": true,
                "conditions": [
                    {"kind": "event_match", "key": "content.body", "pattern": "@room"},
                    {"kind": "sender_notification_permission", "key": "room"},
                ],
                "actions": ["notify", {"set_tweak": "highlight"}],
            })
        );
    }

    #[test]
    fn default_rules_missing_from_stored_rules_take_their_places() {
        // Rules stored before the legacy mention rules were defaults, with a rule of the user's
        // of each kind: the missing defaults go where the spec puts them, behind the user's.
        let alice = owned_user_id!("@alice:test");
        let mut rules = Ruleset::server_default(&alice);
        let mine = |id: &str| NewConditionalPushRule::new(id.to_owned(), vec![], vec![]);
        rules
            .insert(NewPushRule::Override(mine("mine")), None, None)
            .unwrap();
        rules
            .insert(
                NewPushRule::Content(ruma::push::NewPatternedPushRule::new(
                    "word".to_owned(),
                    "word".to_owned(),
                    vec![],
                )),
                None,
                None,
            )
            .unwrap();
        let merged = merged_push_rules(&alice, Some(&push_rules_json(rules).unwrap())).unwrap();
        let defaults = server_default_push_rules(&alice);
        let mut expected = rule_ids(defaults.override_.iter());
        expected.insert(1, "mine");
        assert_eq!(rule_ids(merged.override_.iter()), expected);
        let content: Vec<&str> = merged.content.iter().map(|r| r.rule_id.as_str()).collect();
        assert_eq!(content, ["word", ".m.rule.contains_user_name"]);
    }
}

//! Push rules on new events: each joined local member's rules (the spec's defaults merged with
//! their changes) decide whether the event notifies or highlights them. The outcome is stored
//! with the event, in its transaction, and feeds `unread_notifications` and `/notifications`.
//!
//! The room context includes the power levels, so `@room` (`.m.rule.is_room_mention`,
//! `.m.rule.roomnotif`) notifies only when the sender may notify the room. Parsed rules are
//! cached per user by the account data position they were read at: a change of rules moves the
//! position, so the cache is never stale, even with other processes writing.
//!
//! The actions of each persisted event are then handed to `crate::pushers`, which sends the
//! notifying ones to the users' push gateways.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use myelin_room_version::{Pdu, RoomVersion};
use myelin_store::{EventRow, JoinedMember, PushAction, RoomRow};
use ruma::{
    Int, OwnedRoomId, OwnedUserId, UInt, UserId,
    power_levels::NotificationPowerLevels,
    push::{PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    room_version_rules::{AuthorizationRules, RoomPowerLevelsRules},
    serde::Raw,
};
use serde_json::Value;

use super::{Rooms, version_of};
use crate::{Error, Result};

pub(super) const PUSH_RULES_TYPE: &str = "m.push_rules";

/// The state (each with the empty state key) that push rule evaluation reads.
pub(super) const PUSH_STATE_TYPES: [&str; 2] = ["m.room.power_levels", "m.room.create"];

/// Parsed push rules by user id, with the stream position of the account data they came from
/// (0 for the defaults of a user who never changed them).
#[derive(Debug, Default)]
pub(super) struct RulesCache {
    rules: Mutex<HashMap<String, (i64, Arc<Ruleset>)>>,
}

impl RulesCache {
    fn get(&self, user_id: &str, position: i64) -> Option<Arc<Ruleset>> {
        let rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        rules
            .get(user_id)
            .filter(|(at, _)| *at == position)
            .map(|(_, r)| r.clone())
    }

    fn put(&self, user_id: &str, position: i64, rules: Arc<Ruleset>) {
        self.rules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user_id.to_owned(), (position, rules));
    }
}

impl Rooms {
    /// What push rule evaluation reads about a room: its joined members with their rules'
    /// positions, and its current state for [`PUSH_STATE_TYPES`].
    pub(super) async fn push_inputs(
        &self,
        room: &RoomRow,
    ) -> Result<(Vec<JoinedMember>, Vec<EventRow>)> {
        let keys = PUSH_STATE_TYPES.map(|kind| (kind.to_owned(), String::new()));
        let (members, state) = tokio::try_join!(
            self.store
                .joined_member_events(room.room_nid, PUSH_RULES_TYPE),
            self.store.current_state(room.room_nid, Some(&keys)),
        )?;
        Ok((members, state))
    }

    /// The push actions of `pdu` for every joined local member other than its sender, from
    /// the room's [`push_inputs`](Self::push_inputs) (read here unless the caller has them).
    pub(super) async fn push_actions(
        &self,
        room: &RoomRow,
        pdu: &Pdu,
        inputs: Option<(Vec<JoinedMember>, &[EventRow])>,
    ) -> Result<Vec<PushAction>> {
        let read;
        let (members, push_state) = match inputs {
            Some(inputs) => inputs,
            None => {
                read = self.push_inputs(room).await?;
                (read.0, read.1.as_slice())
            }
        };
        let member_count = UInt::try_from(members.len() as u64).unwrap_or(UInt::MAX);
        // Whom to evaluate for, with the display name their member event gives and the
        // position of their stored rules.
        let mut targets: Vec<(OwnedUserId, Option<String>, i64)> = Vec::new();
        for member in &members {
            let Ok(user_id) = UserId::parse(member.user_id.as_str()) else {
                continue;
            };
            // The sender is never notified of its own event; in account-key rooms it sends
            // under its key-form id while the membership index names it by account.
            if !self.is_local(&user_id)
                || user_id.as_str() == pdu.sender()
                || self.key_form_of(&user_id).as_deref() == Some(pdu.sender())
            {
                continue;
            }
            let display_name = serde_json::from_str::<Value>(&member.member_json)
                .ok()
                .and_then(|j| j["content"]["displayname"].as_str().map(str::to_owned));
            targets.push((user_id, display_name, member.data_position));
        }
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let rules = self.rules_of(&targets).await?;
        let power_levels = power_levels_ctx(room, push_state)?;
        let event = pdu.client_event(serde_json::Map::new());
        let to_raw = |event: &Value| -> Result<Raw<ruma::events::AnySyncTimelineEvent>> {
            serde_json::value::to_raw_value(event)
                .map(Raw::from_json)
                .map_err(|e| Error::Internal(e.to_string()))
        };
        let raw = to_raw(&event)?;
        let version = version_of(room)?;
        let room_id = OwnedRoomId::try_from(room.room_id.as_str())
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut out = Vec::new();
        for ((user_id, display_name, _), rules) in targets.into_iter().zip(rules) {
            // In account-key rooms the rules see the event as this member's client would
            // (names, not keys, so mention rules match), and an event the projection hides
            // from it (an unverified or erased sender's) notifies nobody.
            let projected;
            let raw = if version.uses_account_keys() {
                let Some(event) = self.project_value(version, event.clone(), Some(&user_id)) else {
                    continue;
                };
                projected = to_raw(&event)?;
                &projected
            } else {
                &raw
            };
            let mut context = PushConditionRoomCtx::new(
                room_id.clone(),
                member_count,
                user_id.clone(),
                display_name.unwrap_or_else(|| user_id.localpart().to_owned()),
            );
            if let Some(power_levels) = &power_levels {
                context = context.with_power_levels(power_levels.clone());
            }
            let actions = rules.get_actions(raw, &context).await;
            let notify = actions.iter().any(|a| a.should_notify());
            if notify {
                out.push(PushAction {
                    user_id: user_id.to_string(),
                    notify,
                    highlight: actions.iter().any(|a| a.is_highlight()),
                    actions: serde_json::to_string(actions)
                        .map_err(|e| Error::Internal(e.to_string()))?,
                });
            }
        }
        Ok(out)
    }

    /// Each target's rules, in order: cached by the position of their stored rules, so the
    /// stored rules are read (and parsed) only for users whose rules changed since.
    async fn rules_of(
        &self,
        targets: &[(OwnedUserId, Option<String>, i64)],
    ) -> Result<Vec<Arc<Ruleset>>> {
        let mut out: Vec<Option<Arc<Ruleset>>> = targets
            .iter()
            .map(|(user_id, _, position)| self.push_rules.get(user_id.as_str(), *position))
            .collect();
        let missing: Vec<&str> = targets
            .iter()
            .zip(&out)
            .filter(|(_, cached)| cached.is_none())
            .map(|((user_id, _, _), _)| user_id.as_str())
            .collect();
        if !missing.is_empty() {
            let stored: HashMap<String, (i64, String)> = self
                .store
                .global_account_data_of(&missing, PUSH_RULES_TYPE)
                .await?
                .into_iter()
                .map(|(user, position, content)| (user, (position, content)))
                .collect();
            for ((user_id, _, _), slot) in targets.iter().zip(out.iter_mut()) {
                if slot.is_some() {
                    continue;
                }
                // Read now, so possibly newer than the position the member row carried.
                let (position, content) = match stored.get(user_id.as_str()) {
                    Some((position, content)) => (*position, Some(content.as_str())),
                    None => (0, None),
                };
                let rules = Arc::new(crate::user_data::merged_push_rules(user_id, content)?);
                self.push_rules
                    .put(user_id.as_str(), position, rules.clone());
                *slot = Some(rules);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }
}

/// The power levels as push conditions see them, from the room's current state for
/// [`PUSH_STATE_TYPES`] (`None` without a power levels event: then nobody may notify the room).
fn power_levels_ctx(
    room: &RoomRow,
    rows: &[EventRow],
) -> Result<Option<PushConditionPowerLevelsCtx>> {
    let content_of = |kind: &str| -> Option<(String, Value)> {
        rows.iter()
            .find(|r| r.event_type == kind && r.state_key.as_deref() == Some(""))
            .and_then(|r| serde_json::from_str::<Value>(&r.json).ok())
            .map(|mut json| {
                let sender = json["sender"].as_str().unwrap_or_default().to_owned();
                (sender, json["content"].take())
            })
    };
    let Some((_, power)) = content_of("m.room.power_levels") else {
        return Ok(None);
    };
    let level = |v: &Value| -> Option<Int> {
        match v {
            Value::Number(n) => n.as_i64().and_then(|n| Int::try_from(n).ok()),
            // Older room versions allowed levels as strings.
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .ok()
                .and_then(|n| Int::try_from(n).ok()),
            _ => None,
        }
    };
    let mut users = BTreeMap::new();
    if let Some(map) = power["users"].as_object() {
        for (user, value) in map {
            if let (Ok(user), Some(level)) = (OwnedUserId::try_from(user.as_str()), level(value)) {
                users.insert(user, level);
            }
        }
    }
    let users_default = level(&power["users_default"]).unwrap_or_default();
    let mut notifications = NotificationPowerLevels::new();
    if let Some(room_level) = level(&power["notifications"]["room"]) {
        notifications.room = room_level;
    }
    let version: &RoomVersion = version_of(room)?;
    let creators: Vec<OwnedUserId> = match content_of("m.room.create") {
        Some((sender, create)) if version.privileges_creators() => std::iter::once(sender)
            .chain(
                create["additional_creators"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.as_str().map(str::to_owned)),
            )
            .filter_map(|c| OwnedUserId::try_from(c.as_str()).ok())
            .collect(),
        _ => Vec::new(),
    };
    // Only the creators' privilege matters to power level reads.
    let authorization = if version.privileges_creators() {
        AuthorizationRules::V12
    } else {
        AuthorizationRules::V10
    };
    let rules = RoomPowerLevelsRules::new(&authorization, creators);
    Ok(Some(PushConditionPowerLevelsCtx::new(
        users,
        users_default,
        notifications,
        rules,
    )))
}

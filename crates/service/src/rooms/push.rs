//! Push rules on new events: each joined local member's rules (the spec's defaults merged with
//! their changes) decide whether the event notifies or highlights them. The outcome is stored
//! with the event, in its transaction, and feeds `unread_notifications` and `/notifications`.
//!
//! Not yet: the power-level context `@room` needs (so `.m.rule.roomnotif` never matches), and
//! push gateways (no HTTP pushers).

use myelin_room_version::Pdu;
use myelin_store::{PushAction, RoomRow};
use ruma::{OwnedRoomId, UInt, UserId, push::PushConditionRoomCtx, serde::Raw};
use serde_json::Value;

use super::Rooms;
use crate::{Error, Result};

impl Rooms {
    /// The push actions of `pdu` for every joined local member other than its sender.
    pub(super) async fn push_actions(&self, room: &RoomRow, pdu: &Pdu) -> Result<Vec<PushAction>> {
        let state = self.store.current_state(room.room_nid, None).await?;
        let joined: Vec<(String, Option<String>)> = state
            .iter()
            .filter(|row| row.event_type == "m.room.member")
            .filter_map(|row| {
                let json: Value = serde_json::from_str(&row.json).ok()?;
                (json["content"]["membership"] == "join").then(|| {
                    (
                        row.state_key.clone().unwrap_or_default(),
                        json["content"]["displayname"].as_str().map(str::to_owned),
                    )
                })
            })
            .collect();
        let member_count = UInt::try_from(joined.len() as u64).unwrap_or(UInt::MAX);
        let event = pdu.client_event(serde_json::Map::new());
        let raw: Raw<ruma::events::AnySyncTimelineEvent> = serde_json::value::to_raw_value(&event)
            .map(Raw::from_json)
            .map_err(|e| Error::Internal(e.to_string()))?;
        let room_id = OwnedRoomId::try_from(room.room_id.as_str())
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut out = Vec::new();
        for (member, display_name) in joined {
            let Ok(user_id) = UserId::parse(member.as_str()) else {
                continue;
            };
            if !self.is_local(&user_id) || user_id.as_str() == pdu.sender() {
                continue;
            }
            let stored = self
                .store
                .account_data(user_id.as_str(), None, "m.push_rules")
                .await?;
            let rules = crate::user_data::merged_push_rules(&user_id, stored.as_deref())?;
            let context = PushConditionRoomCtx::new(
                room_id.clone(),
                member_count,
                user_id.clone(),
                display_name.unwrap_or_else(|| user_id.localpart().to_owned()),
            );
            let actions = rules.get_actions(&raw, &context).await;
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
}

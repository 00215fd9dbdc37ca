//! Redactions by local users: the redaction event, then the stored event replaced by its
//! redacted form per the room version.

use myelin_room_version::{
    canonical::{redact, to_canonical_string},
    redaction::{PowerLevel, redact_level, user_power_level},
    version::RedactionAlgorithm,
};
use serde_json::json;

use super::{Rooms, events::LocalEvent, pdu_of, version_of};
use crate::{Error, Result, accounts::AuthedUser};

impl Rooms {
    /// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`. A client may redact its own events, or
    /// anyone's with the redact power level; the event is then stored redacted.
    pub async fn redact(
        &self,
        user: &AuthedUser,
        room_id: &str,
        event_id: &str,
        reason: Option<&str>,
        txn_id: &str,
    ) -> Result<String> {
        let room = self.room(room_id).await?;
        let version = version_of(&room)?;
        let target_row = self
            .store
            .event(event_id)
            .await?
            .filter(|row| row.room_nid == room.room_nid)
            .ok_or_else(|| Error::NotFound("Event not found".to_owned()))?;
        let target = pdu_of(&target_row, version)?;
        let keys = [
            ("m.room.create".to_owned(), String::new()),
            ("m.room.power_levels".to_owned(), String::new()),
        ];
        let state = self.store.current_state(room.room_nid, Some(&keys)).await?;
        let create = state
            .iter()
            .find(|r| r.event_type == "m.room.create")
            .map(|r| pdu_of(r, version))
            .transpose()?
            .ok_or_else(|| Error::Internal("room without a create event".to_owned()))?;
        let power = state
            .iter()
            .find(|r| r.event_type == "m.room.power_levels")
            .map(|r| pdu_of(r, version))
            .transpose()?;
        let own = target.sender() == user.user_id.as_str();
        let powerful = user_power_level(version, user.user_id.as_str(), &create, power.as_ref())
            >= PowerLevel::Int(redact_level(version, power.as_ref()));
        if !own && !powerful {
            return Err(Error::Forbidden(
                "You may only redact your own events without the redact power level".to_owned(),
            ));
        }

        let mut content = json!({});
        if version.redaction() == RedactionAlgorithm::V11 {
            content["redacts"] = json!(event_id);
        }
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        let redaction_id = self
            .send(
                &room,
                &user.user_id,
                LocalEvent {
                    event_type: "m.room.redaction",
                    state_key: None,
                    content,
                    redacts: Some(event_id),
                    txn: Some((user.device_id.as_str(), txn_id)),
                },
            )
            .await?;
        if target_row.redacted_by.is_none() {
            let redacted = redact(target.json(), version)
                .map_err(|e| Error::Internal(format!("redacting {event_id}: {e}")))?;
            self.store
                .redact_event(event_id, &to_canonical_string(&redacted), &redaction_id)
                .await?;
        }
        Ok(redaction_id)
    }
}

//! Redactions by local users, whichever endpoint they come through (`/redact` or
//! `/send/m.room.redaction`): the one rule that decides whether a redaction may be sent (the
//! redacter is joined, the target is in the same room, and it is the redacter's own event or
//! they have the redact power level; a target not stored here needs the power level, and the
//! redaction waits for it), and the redacted copy of the target, which is written in the same
//! transaction as the redaction.
//!
//! The auth rules leave the "own event" check to the resident server (before room version 11
//! they only compare the servers of the two senders), so without this rule a member could
//! redact anyone's events through the generic send endpoint.

use myelin_room_version::{
    canonical::{redact, to_canonical_string},
    redaction::{PowerLevel, redact_level, user_power_level},
    version::RedactionAlgorithm,
};
use serde_json::{Value, json};

use super::{
    Rooms,
    events::{ClientTxn, LocalEvent, Ruled},
    pdu_of, version_of,
};
use crate::{Error, Result, accounts::AuthedUser};

/// A redaction that passed [`Rooms::redaction`]'s checks: only this module makes one.
#[derive(Debug, Clone)]
pub(crate) struct RedactionRuled {
    redacts: String,
    /// The target's redacted JSON, unless it was redacted before (the first redaction stays).
    redacted_copy: Option<String>,
    /// The target is not stored here: the redaction (by a redacter with the redact power
    /// level) waits for it, and applies if it arrives in this room.
    waits_for_target: bool,
}

impl RedactionRuled {
    pub(crate) fn redacts(&self) -> &str {
        &self.redacts
    }

    /// `(target, by power)` for the store when the target is yet to arrive.
    pub(crate) fn waits(&self) -> Option<(&str, bool)> {
        self.waits_for_target
            .then_some((self.redacts.as_str(), true))
    }

    /// `(target, redacted JSON)` for the store.
    pub(crate) fn redacted_copy(&self) -> Option<(&str, &str)> {
        self.redacted_copy
            .as_deref()
            .map(|json| (self.redacts.as_str(), json))
    }
}

impl Rooms {
    /// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`.
    pub async fn redact(
        &self,
        user: &AuthedUser,
        room_id: &str,
        event_id: &str,
        reason: Option<&str>,
        txn_id: &str,
    ) -> Result<String> {
        let mut content = json!({});
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        let txn = ClientTxn {
            device_id: user.device_id.as_str(),
            txn_id,
            scope: format!("/rooms/{room_id}/redact/{event_id}"),
        };
        self.redaction(user, room_id, event_id, content, txn).await
    }

    /// Every redaction a local user sends: the checks, then the redaction event with the
    /// target's redacted copy. A retransmission of the same transaction gets the first answer.
    pub(super) async fn redaction(
        &self,
        user: &AuthedUser,
        room_id: &str,
        event_id: &str,
        mut content: Value,
        txn: ClientTxn<'_>,
    ) -> Result<String> {
        // An unknown room and a room the user is not in get the same answer.
        let not_in_room = || Error::Forbidden("You are not in this room".to_owned());
        let room = self.store.room(room_id).await?.ok_or_else(not_in_room)?;
        if let Some(event_id) = self
            .store
            .txn_event_id(txn.key(user.user_id.as_str()))
            .await?
        {
            return Ok(event_id);
        }
        let joined = self
            .store
            .membership(room.room_nid, user.user_id.as_str())
            .await?
            .is_some_and(|(membership, _, _)| membership == "join");
        if !joined {
            return Err(not_in_room());
        }
        let version = version_of(&room)?;
        // A stored target must be of this room. One not stored here (another server's event
        // this server never got) may be redacted only with the redact power level: whose it
        // is cannot be told, and the redaction applies only if it turns up in this room.
        let target_row = match self.store.event(event_id).await? {
            Some(row) if row.room_nid == room.room_nid => Some(row),
            Some(_) => return Err(Error::NotFound("Event not found".to_owned())),
            None => None,
        };
        let target = target_row
            .as_ref()
            .map(|row| pdu_of(row, version))
            .transpose()?;
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
        // In account-key rooms the redactor is its key-form id, as the room's events name it.
        let redactor = self.room_user_id(version, &user.user_id).await?;
        let own = target.as_ref().is_some_and(|t| t.sender() == redactor);
        let powerful = user_power_level(version, &redactor, &create, power.as_ref())
            >= PowerLevel::Int(redact_level(version, power.as_ref()));
        if !own && !powerful {
            return Err(Error::Forbidden(
                "You may only redact your own events without the redact power level".to_owned(),
            ));
        }

        let Some(fields) = content.as_object_mut() else {
            return Err(Error::BadJson(
                "Event content must be a JSON object".to_owned(),
            ));
        };
        if version.redaction() == RedactionAlgorithm::V11 {
            fields.insert("redacts".to_owned(), json!(event_id));
        }
        let redacted_copy = match (&target_row, &target) {
            (Some(row), Some(target)) if row.redacted_by.is_none() => Some(to_canonical_string(
                &redact(target.json(), version)
                    .map_err(|e| Error::Internal(format!("redacting {event_id}: {e}")))?,
            )),
            _ => None,
        };
        self.send(
            &room,
            &user.user_id,
            LocalEvent {
                event_type: "m.room.redaction",
                state_key: None,
                content,
                ruled: Ruled::Redaction(RedactionRuled {
                    redacts: event_id.to_owned(),
                    redacted_copy,
                    waits_for_target: target_row.is_none(),
                }),
                txn: Some(txn),
            },
        )
        .await
    }
}

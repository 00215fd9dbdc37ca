//! The client's two send endpoints (`PUT /rooms/{roomId}/send/...` and
//! `PUT /rooms/{roomId}/state/...`): each event type that has a server-side rule goes to it
//! (membership events to [`Rooms::change_membership`], redactions to [`Rooms::redaction`]), so
//! no endpoint is a way around the checks the dedicated endpoints make.

use ruma::UserId;
use serde_json::Value;

use super::{
    Rooms,
    events::{ClientTxn, LocalEvent, Ruled, send_scope},
};
use crate::{Error, Result, accounts::AuthedUser};

impl Rooms {
    /// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`.
    pub async fn send_message(
        &self,
        user: &AuthedUser,
        room_id: &str,
        event_type: &str,
        content: Value,
        txn_id: &str,
    ) -> Result<String> {
        let txn = ClientTxn {
            device_id: user.device_id.as_str(),
            txn_id,
            scope: send_scope(room_id, event_type),
        };
        match event_type {
            "m.room.redaction" => {
                // The v11 form names the target in the content; older versions have no other
                // way to name it through this endpoint.
                let target = content
                    .get("redacts")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        Error::BadJson(
                            "A redaction names the event it redacts in content.redacts".to_owned(),
                        )
                    })?;
                self.redaction(user, room_id, &target, content, txn).await
            }
            "m.room.member" => Err(Error::Forbidden(
                "m.room.member is a state event: change memberships through the membership endpoints"
                    .to_owned(),
            )),
            _ => {
                let room = self.room(room_id).await?;
                self.send(
                    &room,
                    &user.user_id,
                    LocalEvent {
                        event_type,
                        state_key: None,
                        content,
                        ruled: Ruled::Plain,
                        txn: Some(txn),
                    },
                )
                .await
            }
        }
    }

    /// `PUT /rooms/{roomId}/state/{eventType}/{stateKey}`.
    pub async fn send_state_event(
        &self,
        user: &UserId,
        room_id: &str,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> Result<String> {
        let room = self.room(room_id).await?;
        self.send_state_of(&room, user, event_type, state_key, content)
            .await
    }

    /// A state event from a local user (a client, or room creation's `initial_state`).
    pub(super) async fn send_state_of(
        &self,
        room: &myelin_store::RoomRow,
        user: &UserId,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> Result<String> {
        match event_type {
            "m.room.member" => {
                let target = UserId::parse(state_key).map_err(|e| {
                    Error::BadJson(format!("The state key of m.room.member is a user id: {e}"))
                })?;
                self.change_membership(room, user, &target, content).await
            }
            "m.room.redaction" => Err(redaction_as_state()),
            _ => {
                self.send(
                    room,
                    user,
                    LocalEvent {
                        event_type,
                        state_key: Some(state_key),
                        content,
                        ruled: Ruled::Plain,
                        txn: None,
                    },
                )
                .await
            }
        }
    }
}

/// The answer to a redaction sent as a state event (from `/state` or a new room's
/// `initial_state`).
pub(super) fn redaction_as_state() -> Error {
    Error::BadJson("Redactions are not state events: send them with /redact".to_owned())
}

//! The EDUs of a transaction: typing notifications, read receipts, presence, to-device
//! messages, device-list and cross-signing key updates. A server speaks only for its own
//! users: an EDU about a user of another server is ignored, and so is one about a room whose
//! ACL denies the origin. Presence and device lists are kept only for users who share a room
//! with someone here. One bad EDU (or entry of one) is logged and skipped; it never fails the
//! transaction. The entries of all of a transaction's EDUs together (receipts, presence
//! updates) are bounded by [`MAX_EDU_ENTRIES`].

use ruma::{OwnedUserId, ServerName, UserId};
use serde_json::{Value, value::RawValue};

use crate::{Error, Result, Services, e2ee::DeviceListEdu, now_millis};

/// Entries (one receipt, one user's presence) taken from one transaction's EDUs at most.
pub const MAX_EDU_ENTRIES: usize = 1_000;
/// The longest `message_id` of a to-device EDU taken (the spec says 32 code points).
const MAX_MESSAGE_ID_BYTES: usize = 128;
/// The most `prev_id`s of an `m.device_list_update` taken (a sender names the updates since its
/// last one: a handful).
const MAX_PREV_IDS: usize = 100;

impl Services {
    /// Applies the EDUs of a transaction (see the module documentation).
    pub(super) async fn receive_transaction_edus(
        &self,
        origin: &ServerName,
        edus: &[Box<RawValue>],
    ) {
        let mut entries_left = MAX_EDU_ENTRIES;
        for raw in edus {
            #[derive(serde::Deserialize)]
            struct Edu {
                edu_type: String,
                #[serde(default)]
                content: Value,
            }
            let Ok(edu) = serde_json::from_str::<Edu>(raw.get()) else {
                tracing::info!(%origin, "ignored an EDU that is not an object with an edu_type");
                continue;
            };
            let content = &edu.content;
            let applied = match edu.edu_type.as_str() {
                "m.typing" => self.typing_edu(origin, content).await,
                "m.receipt" => self.receipt_edu(origin, content, &mut entries_left).await,
                "m.presence" => self.presence_edu(origin, content, &mut entries_left).await,
                "m.direct_to_device" => self.to_device_edu(origin, content).await,
                "m.device_list_update" => self.device_list_edu(origin, content).await,
                "m.signing_key_update" => self.signing_key_edu(origin, content).await,
                other => {
                    tracing::debug!(%origin, edu_type = other, "ignored an EDU of a type this server does not handle");
                    Ok(())
                }
            };
            if let Err(err) = applied {
                tracing::info!(%origin, edu_type = %edu.edu_type, %err, "ignored an EDU");
            }
        }
    }

    /// `m.typing`: `{room_id, user_id, typing}`.
    async fn typing_edu(&self, origin: &ServerName, content: &Value) -> Result<()> {
        let room_id = string(content, "room_id")?;
        let user = user_of(origin, string(content, "user_id")?)?;
        let typing = content["typing"]
            .as_bool()
            .ok_or_else(|| Error::BadJson("typing must be a boolean".to_owned()))?;
        self.room_admits(origin, room_id).await?;
        let member = self.member_id_in(room_id, &user).await?;
        self.ephemeral
            .set_remote_typing(&user, &member, room_id, typing)
            .await
    }

    /// The id room `room_id`'s state names another server's `user` by: in account-key rooms,
    /// where EDUs carry account-name ids, the key verified under that name (MSC4243.md §2.7;
    /// an unverified key matches nothing, and the EDU is ignored); elsewhere the id itself.
    async fn member_id_in(&self, room_id: &str, user: &UserId) -> Result<String> {
        let Some(room) = self.store.room(room_id).await? else {
            return Err(Error::NotFound(format!("Unknown room {room_id}")));
        };
        let account_keys = myelin_room_version::RoomVersion::get(&room.room_version)
            .is_ok_and(|version| version.uses_account_keys());
        if account_keys && myelin_room_version::KeyFormUserId::parse(user.as_str()).is_err() {
            self.rooms.key_form_in_room(&room, user.as_str()).await
        } else {
            Ok(user.to_string())
        }
    }

    /// `m.receipt`: `{room_id: {"m.read": {user_id: {event_ids: [id], data: {ts, thread_id?}}}}}`.
    /// Only `m.read` federates (private receipts never leave their server).
    async fn receipt_edu(
        &self,
        origin: &ServerName,
        content: &Value,
        entries_left: &mut usize,
    ) -> Result<()> {
        let rooms = content
            .as_object()
            .ok_or_else(|| Error::BadJson("m.receipt content must be an object".to_owned()))?;
        for (room_id, by_type) in rooms {
            if let Err(err) = self.room_admits(origin, room_id).await {
                tracing::info!(%origin, %room_id, %err, "ignored receipts");
                continue;
            }
            let Some(readers) = by_type["m.read"].as_object() else {
                continue;
            };
            for (user_id, receipt) in readers {
                if *entries_left == 0 {
                    return Err(Error::TooLarge(format!(
                        "a transaction's EDUs may hold {MAX_EDU_ENTRIES} entries"
                    )));
                }
                *entries_left -= 1;
                let applied = async {
                    let user = user_of(origin, user_id)?;
                    let member = self.member_id_in(room_id, &user).await?;
                    let event_id = receipt["event_ids"]
                        .as_array()
                        .and_then(|ids| ids.first())
                        .and_then(Value::as_str)
                        .ok_or_else(|| Error::BadJson("a receipt needs event_ids".to_owned()))?;
                    let ts = receipt["data"]["ts"].as_i64().unwrap_or_else(now_millis);
                    let thread_id = receipt["data"]["thread_id"].as_str();
                    self.ephemeral
                        .set_remote_receipt(&user, &member, room_id, event_id, thread_id, ts)
                        .await
                }
                .await;
                if let Err(err) = applied {
                    tracing::info!(%origin, %room_id, %user_id, %err, "ignored a receipt");
                }
            }
        }
        Ok(())
    }

    /// `m.presence`: `{push: [{user_id, presence, status_msg?, last_active_ago, ...}]}`.
    async fn presence_edu(
        &self,
        origin: &ServerName,
        content: &Value,
        entries_left: &mut usize,
    ) -> Result<()> {
        let updates = content["push"]
            .as_array()
            .ok_or_else(|| Error::BadJson("m.presence needs push".to_owned()))?;
        for update in updates {
            if *entries_left == 0 {
                return Err(Error::TooLarge(format!(
                    "a transaction's EDUs may hold {MAX_EDU_ENTRIES} entries"
                )));
            }
            *entries_left -= 1;
            let applied = async {
                let user = user_of(origin, string(update, "user_id")?)?;
                self.shares_a_room_here(&user).await?;
                self.ephemeral
                    .set_remote_presence(
                        &user,
                        string(update, "presence")?,
                        update["status_msg"].as_str(),
                        update["last_active_ago"].as_i64().unwrap_or(0),
                    )
                    .await
            }
            .await;
            if let Err(err) = applied {
                tracing::info!(%origin, %err, "ignored a presence update");
            }
        }
        Ok(())
    }

    /// `m.direct_to_device`: `{sender, type, message_id, messages: {user: {device | "*": content}}}`.
    async fn to_device_edu(&self, origin: &ServerName, content: &Value) -> Result<()> {
        let sender = user_of(origin, string(content, "sender")?)?;
        let event_type = string(content, "type")?;
        let message_id = string(content, "message_id")?;
        if message_id.len() > MAX_MESSAGE_ID_BYTES {
            return Err(Error::BadJson("message_id is too long".to_owned()));
        }
        let messages = content["messages"]
            .as_object()
            .ok_or_else(|| Error::BadJson("messages must be an object".to_owned()))?;
        self.ephemeral
            .receive_remote_to_device(
                &sender,
                &self.config.server_name,
                event_type,
                message_id,
                messages,
            )
            .await
    }

    /// `m.device_list_update`: `{user_id, device_id, stream_id, prev_id?, deleted?, keys?,
    /// device_display_name?}`: applied to the cached list when it follows on from it, else the
    /// list is fetched again (see `e2ee::remote`).
    async fn device_list_edu(&self, origin: &ServerName, content: &Value) -> Result<()> {
        let user = user_of(origin, string(content, "user_id")?)?;
        let stream_id = content["stream_id"]
            .as_i64()
            .ok_or_else(|| Error::BadJson("stream_id must be an integer".to_owned()))?;
        let prev_ids = match &content["prev_id"] {
            Value::Null => Vec::new(),
            Value::Array(ids) if ids.len() <= MAX_PREV_IDS => ids
                .iter()
                .map(|id| {
                    id.as_i64()
                        .ok_or_else(|| Error::BadJson("prev_id must hold integers".to_owned()))
                })
                .collect::<Result<Vec<i64>>>()?,
            _ => return Err(Error::BadJson("prev_id must be a short list".to_owned())),
        };
        let keys = match &content["keys"] {
            Value::Null => None,
            keys @ Value::Object(_) => Some(keys.clone()),
            _ => return Err(Error::BadJson("keys must be an object".to_owned())),
        };
        self.shares_a_room_here(&user).await?;
        self.e2ee
            .remote_device_list_update(&DeviceListEdu {
                user,
                device_id: string(content, "device_id")?.to_owned(),
                stream_id,
                prev_ids,
                deleted: content["deleted"].as_bool().unwrap_or(false),
                keys,
                display_name: content["device_display_name"].as_str().map(str::to_owned),
                on_join: content[crate::federation::sender::ON_JOIN]
                    .as_bool()
                    .unwrap_or(false),
            })
            .await?;
        Ok(())
    }

    /// `m.signing_key_update`: `{user_id, master_key?, self_signing_key?}`.
    async fn signing_key_edu(&self, origin: &ServerName, content: &Value) -> Result<()> {
        let user = user_of(origin, string(content, "user_id")?)?;
        let key = |field: &str| -> Result<Option<&Value>> {
            match &content[field] {
                Value::Null => Ok(None),
                key @ Value::Object(_) => Ok(Some(key)),
                _ => Err(Error::BadJson(format!("{field} must be an object"))),
            }
        };
        let (master, self_signing) = (key("master_key")?, key("self_signing_key")?);
        self.shares_a_room_here(&user).await?;
        self.e2ee
            .remote_signing_keys_update(&user, master, self_signing)
            .await
    }

    /// Refuses when this server does not know the room or its ACL denies `origin`.
    async fn room_admits(&self, origin: &ServerName, room_id: &str) -> Result<()> {
        if self.store.room(room_id).await?.is_none() {
            return Err(Error::NotFound(format!("Unknown room {room_id}")));
        }
        if !self.rooms.server_allowed(room_id, origin).await? {
            return Err(Error::Forbidden(format!(
                "the server ACL of {room_id} denies {origin}"
            )));
        }
        Ok(())
    }

    /// Refuses when `user` shares no room with a user of this server (nobody here may hear of
    /// them, so nothing is kept).
    async fn shares_a_room_here(&self, user: &UserId) -> Result<()> {
        if self
            .store
            .shares_room_with_server(user.as_str(), self.config.server_name.as_str())
            .await?
        {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "{user} shares no room with this server"
            )))
        }
    }
}

/// A string field of an EDU's content.
fn string<'a>(content: &'a Value, field: &str) -> Result<&'a str> {
    content[field]
        .as_str()
        .ok_or_else(|| Error::BadJson(format!("{field} must be a string")))
}

/// `user_id` as a user of `origin`; an EDU about another server's user is not the origin's to
/// send.
fn user_of(origin: &ServerName, user_id: &str) -> Result<OwnedUserId> {
    let user = UserId::parse(user_id)
        .map_err(|_| Error::BadJson(format!("{user_id} is not a user ID")))?;
    if user.server_name() != origin {
        return Err(Error::Forbidden(format!(
            "{origin} may not speak for {user_id}"
        )));
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use ruma::server_name;

    use super::user_of;

    #[test]
    fn a_server_speaks_only_for_its_own_users() {
        assert!(user_of(server_name!("peer.test"), "@bob:peer.test").is_ok());
        assert!(user_of(server_name!("peer.test"), "@bob:other.test").is_err());
        assert!(user_of(server_name!("peer.test"), "@bob:peer.test:8448").is_err());
        assert!(user_of(server_name!("peer.test"), "not a user").is_err());
    }
}

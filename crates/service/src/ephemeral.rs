//! Typing notifications (in memory, expiring), receipts and read markers, to-device messages
//! and presence: everything /sync delivers beside room events and account data.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, Instant},
};

use myelin_store::{Store, ephemeral::ReceiptRow};
use ruma::UserId;
use serde_json::{Map, Value, json};

use crate::{Error, Result, accounts::AuthedUser, notifier::Notifier, now_millis};

/// Typing notifications last at most this long without a refresh.
const MAX_TYPING: Duration = Duration::from_secs(120);
/// A remote user's typing notification lasts this long unless their server repeats it (servers
/// send `typing: false` when it ends; this covers one that goes away).
pub const REMOTE_TYPING_TIMEOUT: Duration = Duration::from_secs(60);
/// To-device messages handed to one sync at most.
pub const TO_DEVICE_BATCH: i64 = 100;

/// Who is typing where, and a serial that moves on every change.
#[derive(Debug, Default)]
struct Typing {
    rooms: Mutex<HashMap<String, HashMap<String, Instant>>>,
    /// The serial of each room's last change.
    changed: Mutex<HashMap<String, i64>>,
    serial: AtomicI64,
}

impl Typing {
    fn touch(&self, room_id: &str) {
        let serial = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
        self.changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(room_id.to_owned(), serial);
    }

    /// Removes expired entries of a room; returns the users whose typing expired.
    fn expire(&self, room_id: &str) -> Vec<String> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let Some(users) = rooms.get_mut(room_id) else {
            return Vec::new();
        };
        let now = Instant::now();
        let expired: Vec<String> = users
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(user, _)| user.clone())
            .collect();
        users.retain(|_, until| *until > now);
        expired
    }
}

/// The ephemeral area.
#[derive(Debug)]
pub struct Ephemeral {
    store: Store,
    notify: Notifier,
    typing: Arc<Typing>,
    /// Per `(user, device)`, the to-device position up to which this process has already
    /// deleted acknowledged messages, so a sync that acknowledges nothing new writes nothing.
    to_device_acked: Arc<Mutex<HashMap<(String, String), i64>>>,
    /// This server's name and the federation sender's feed: local users' typing and receipts
    /// go to the other servers in the room, to-device messages to remote users' servers.
    /// `None`: nothing goes out (remote recipients of to-device messages are skipped).
    federation: Option<(ruma::OwnedServerName, crate::federation::EduFeed)>,
}

impl Ephemeral {
    pub fn new(store: Store, notify: Notifier) -> Self {
        Ephemeral {
            store,
            notify,
            typing: Arc::default(),
            to_device_acked: Arc::default(),
            federation: None,
        }
    }

    /// Hands typing, receipts and remote to-device messages to the federation sender.
    pub fn with_federation(
        mut self,
        server_name: ruma::OwnedServerName,
        feed: crate::federation::EduFeed,
    ) -> Self {
        self.federation = Some((server_name, feed));
        self
    }

    fn publish(&self, notice: crate::federation::EduNotice) {
        if let Some((_, feed)) = &self.federation {
            feed.publish(notice);
        }
    }

    async fn joined_room(&self, member: &str, room_id: &str) -> Result<i64> {
        let room = self
            .store
            .room(room_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("Unknown room {room_id}")))?;
        match self.store.membership(room.room_nid, member).await? {
            Some((membership, _, _)) if membership == "join" => Ok(room.room_nid),
            _ => Err(Error::Forbidden(
                "You are not joined to this room".to_owned(),
            )),
        }
    }

    // ----- typing -----

    /// `PUT /rooms/{roomId}/typing/{userId}`. A typing notification expires after `timeout`
    /// (at most two minutes) unless refreshed; waiting syncs hear about both edges.
    pub async fn set_typing(
        &self,
        user: &AuthedUser,
        target: &UserId,
        room_id: &str,
        typing: bool,
        timeout: Duration,
    ) -> Result<()> {
        if user.user_id != target {
            return Err(Error::Forbidden(
                "You may only set your own typing state".to_owned(),
            ));
        }
        self.joined_room(target.as_str(), room_id).await?;
        self.set_typing_of(target, room_id, typing, timeout.min(MAX_TYPING));
        Ok(())
    }

    /// A remote user's typing, as their server's `m.typing` EDU tells it (the federation
    /// receiver has checked that the sending server speaks for the user and that the room's
    /// ACL admits it). The user must be joined to the room. It expires after
    /// [`REMOTE_TYPING_TIMEOUT`] unless their server says it again. `member`: the id the room's
    /// state names the user by (the key-form id in account-key rooms, where EDUs carry
    /// account-name ids, MSC4243.md §2.7).
    pub async fn set_remote_typing(
        &self,
        user: &UserId,
        member: &str,
        room_id: &str,
        typing: bool,
    ) -> Result<()> {
        self.joined_room(member, room_id).await?;
        self.set_typing_of(user, room_id, typing, REMOTE_TYPING_TIMEOUT);
        Ok(())
    }

    fn set_typing_of(&self, target: &UserId, room_id: &str, typing: bool, timeout: Duration) {
        {
            let mut rooms = self.typing.rooms.lock().unwrap_or_else(|p| p.into_inner());
            let users = rooms.entry(room_id.to_owned()).or_default();
            if typing {
                users.insert(target.to_string(), Instant::now() + timeout);
            } else {
                users.remove(target.as_str());
            }
        }
        self.typing.touch(room_id);
        self.notify.notify();
        self.publish(crate::federation::EduNotice::Typing {
            room_id: room_id.to_owned(),
            user_id: target.to_string(),
            typing,
        });
        if typing {
            let state = self.typing.clone();
            let notify = self.notify.clone();
            let feed = self.federation.as_ref().map(|(_, feed)| feed.clone());
            let room_id = room_id.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(timeout + Duration::from_millis(5)).await;
                let expired = state.expire(&room_id);
                if !expired.is_empty() {
                    state.touch(&room_id);
                    notify.notify();
                }
                for user_id in expired {
                    if let Some(feed) = &feed {
                        feed.publish(crate::federation::EduNotice::Typing {
                            room_id: room_id.clone(),
                            user_id,
                            typing: false,
                        });
                    }
                }
            });
        }
    }

    /// The typing serial, for sync tokens.
    pub fn typing_position(&self) -> i64 {
        self.typing.serial.load(Ordering::SeqCst)
    }

    /// `m.typing` for a room if it changed after `since` (always for an initial sync).
    pub fn typing_event(&self, room_id: &str, since: Option<i64>) -> Option<Value> {
        self.typing.expire(room_id);
        let changed = self
            .typing
            .changed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(room_id)
            .copied();
        let users: Vec<String> = self
            .typing
            .rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(room_id)
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default();
        let relevant = match since {
            Some(since) => changed.is_some_and(|c| c > since),
            None => !users.is_empty(),
        };
        relevant.then(|| json!({"type": "m.typing", "content": {"user_ids": users}}))
    }

    // ----- receipts and read markers -----

    /// `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`.
    pub async fn set_receipt(
        &self,
        user: &AuthedUser,
        user_data: &crate::user_data::UserData,
        room_id: &str,
        receipt_type: &str,
        event_id: &str,
        thread_id: Option<&str>,
    ) -> Result<()> {
        let room_nid = self.joined_room(user.user_id.as_str(), room_id).await?;
        // Only an event clients can see: a receipt on a soft-failed, rejected or outlier event
        // would tell of it, and move the reader's read position past what they were shown.
        if self
            .store
            .event(event_id)
            .await?
            .is_none_or(|row| row.room_nid != room_nid || !crate::rooms::read::in_timeline(&row))
        {
            return Err(Error::NotFound("Unknown event in this room".to_owned()));
        }
        match receipt_type {
            "m.read" | "m.read.private" => {
                let position = self
                    .store
                    .set_receipt(
                        room_nid,
                        user.user_id.as_str(),
                        receipt_type,
                        thread_id.unwrap_or(""),
                        event_id,
                        now_millis(),
                    )
                    .await?;
                self.notify.notify();
                if receipt_type == "m.read" {
                    self.publish(crate::federation::EduNotice::Receipt {
                        room_id: room_id.to_owned(),
                        position,
                    });
                }
                Ok(())
            }
            "m.fully_read" => {
                if thread_id.is_some() {
                    return Err(Error::InvalidParam(
                        "m.fully_read cannot be threaded".to_owned(),
                    ));
                }
                user_data
                    .set_fully_read(&user.user_id, room_id, event_id)
                    .await?;
                Ok(())
            }
            other => Err(Error::InvalidParam(format!("Unknown receipt type {other}"))),
        }
    }

    /// A remote user's read receipt (`m.read`), as their server's `m.receipt` EDU tells it
    /// (the federation receiver has checked that the sending server speaks for the user and
    /// that the room's ACL admits it). The user must be joined, and the event one of the
    /// room's that clients here see (a receipt on a hidden event would tell of it). `member` as
    /// for [`Ephemeral::set_remote_typing`].
    pub async fn set_remote_receipt(
        &self,
        user: &UserId,
        member: &str,
        room_id: &str,
        event_id: &str,
        thread_id: Option<&str>,
        ts: i64,
    ) -> Result<()> {
        let room_nid = self.joined_room(member, room_id).await?;
        if self
            .store
            .event(event_id)
            .await?
            .is_none_or(|row| row.room_nid != room_nid || !crate::rooms::read::in_timeline(&row))
        {
            return Err(Error::NotFound("Unknown event in this room".to_owned()));
        }
        self.store
            .set_receipt(
                room_nid,
                user.as_str(),
                "m.read",
                thread_id.unwrap_or(""),
                event_id,
                ts,
            )
            .await?;
        self.notify.notify();
        Ok(())
    }

    // ----- to-device -----

    /// `PUT /sendToDevice/{eventType}/{txnId}`: local recipients' messages are queued for their
    /// devices (`*` means every device of the user), remote recipients' in the federation
    /// outbox, one `m.direct_to_device` EDU per server (their server expands `*`), in the same
    /// transaction.
    pub async fn send_to_device(
        &self,
        sender: &AuthedUser,
        server_name: &ruma::ServerName,
        event_type: &str,
        txn_id: &str,
        messages: &Map<String, Value>,
    ) -> Result<()> {
        self.queue_for_local_devices(
            sender.user_id.as_str(),
            sender.device_id.as_str(),
            server_name,
            event_type,
            txn_id,
            messages,
            Relay::ToOtherServers,
        )
        .await
    }

    /// A remote user's to-device messages, as their server's `m.direct_to_device` EDU brings
    /// them (the federation receiver has checked that the sending server speaks for the
    /// sender): queued for the local devices they name, once per `message_id` of the sender
    /// (a retransmitted EDU queues nothing more). Recipients on other servers are skipped.
    pub async fn receive_remote_to_device(
        &self,
        sender: &UserId,
        server_name: &ruma::ServerName,
        event_type: &str,
        message_id: &str,
        messages: &Map<String, Value>,
    ) -> Result<()> {
        // Remote senders have no device here: the empty device id keys their message ids.
        self.queue_for_local_devices(
            sender.as_str(),
            "",
            server_name,
            event_type,
            message_id,
            messages,
            Relay::LocalOnly,
        )
        .await
    }

    /// Queues `messages` (user → device or `*` → content) from `sender`'s `sender_device` for
    /// local recipients, and with [`Relay::ToOtherServers`] for remote ones in the federation
    /// outbox, once per `(sender, sender_device, event_type, txn_id)`.
    #[allow(clippy::too_many_arguments)]
    async fn queue_for_local_devices(
        &self,
        sender: &str,
        sender_device: &str,
        server_name: &ruma::ServerName,
        event_type: &str,
        txn_id: &str,
        messages: &Map<String, Value>,
        relay: Relay,
    ) -> Result<()> {
        let mut queued = Vec::new();
        // Remote recipients, by server: `{user: {device: content}}`, one EDU per server.
        let mut remote: std::collections::BTreeMap<ruma::OwnedServerName, Map<String, Value>> =
            Default::default();
        let mut remote_count = 0;
        for (user_id, devices) in messages {
            let Ok(target) = UserId::parse(user_id.as_str()) else {
                return Err(Error::InvalidParam(format!("{user_id} is not a user ID")));
            };
            if target.server_name() != server_name {
                if relay == Relay::LocalOnly {
                    // Another server's messages are delivered here, never relayed further.
                    continue;
                }
                if self.federation.is_none() {
                    tracing::warn!(%target, "to-device message for a remote user dropped: federation is off");
                    continue;
                }
                let Some(devices) = devices.as_object() else {
                    return Err(Error::BadJson(
                        "messages must map users to devices to contents".to_owned(),
                    ));
                };
                for content in devices.values() {
                    if !content.is_object() {
                        return Err(Error::BadJson(
                            "to-device content must be an object".to_owned(),
                        ));
                    }
                    crate::limits::at_most(
                        "A to-device message's content (bytes)",
                        content.to_string().len(),
                        crate::limits::MAX_TO_DEVICE_CONTENT_BYTES,
                    )?;
                    remote_count += 1;
                }
                crate::limits::at_most(
                    "The number of to-device messages in one request",
                    queued.len() + remote_count,
                    crate::limits::MAX_TO_DEVICE_MESSAGES,
                )?;
                remote
                    .entry(target.server_name().to_owned())
                    .or_default()
                    .insert(target.to_string(), Value::Object(devices.clone()));
                continue;
            }
            let Some(devices) = devices.as_object() else {
                return Err(Error::BadJson(
                    "messages must map users to devices to contents".to_owned(),
                ));
            };
            for (device_id, content) in devices {
                if !content.is_object() {
                    return Err(Error::BadJson(
                        "to-device content must be an object".to_owned(),
                    ));
                }
                let text = content.to_string();
                crate::limits::at_most(
                    "A to-device message's content (bytes)",
                    text.len(),
                    crate::limits::MAX_TO_DEVICE_CONTENT_BYTES,
                )?;
                if device_id == "*" {
                    for device in self.store.devices(target.as_str()).await? {
                        queued.push((target.to_string(), device.device_id, text.clone()));
                    }
                } else {
                    queued.push((target.to_string(), device_id.clone(), text));
                }
                crate::limits::at_most(
                    "The number of to-device messages in one request",
                    queued.len() + remote_count,
                    crate::limits::MAX_TO_DEVICE_MESSAGES,
                )?;
            }
        }
        // `m.direct_to_device` EDU contents; the message id lets the receiver drop a copy
        // delivered twice.
        let outbox: Vec<(String, String)> = remote
            .iter()
            .map(|(server, users)| {
                let content = json!({
                    "sender": sender,
                    "type": event_type,
                    "message_id": crate::tokens::random_from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", 24),
                    "messages": users,
                });
                (server.to_string(), content.to_string())
            })
            .collect();
        let fresh = self
            .store
            .queue_to_device_everywhere(
                sender,
                sender_device,
                txn_id,
                event_type,
                &queued,
                &outbox,
                now_millis(),
            )
            .await?;
        self.notify.notify();
        if fresh && !remote.is_empty() {
            self.publish(crate::federation::EduNotice::Outbox {
                destinations: remote.into_keys().collect(),
            });
        }
        Ok(())
    }

    /// The device's pending messages after `since` (deleting those up to `since`, which the
    /// device acknowledged by syncing from there). Returns the events and the position to put
    /// in the next token.
    pub async fn to_device_for(
        &self,
        user: &AuthedUser,
        since: i64,
        current: i64,
    ) -> Result<(Vec<Value>, i64)> {
        let key = (user.user_id.to_string(), user.device_id.to_string());
        let acked = self
            .to_device_acked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied()
            .unwrap_or(0);
        if since > acked {
            self.store
                .delete_to_device(user.user_id.as_str(), user.device_id.as_str(), since)
                .await?;
            self.to_device_acked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, since);
        }
        if since >= current {
            // Nothing was queued for anyone since the token.
            return Ok((Vec::new(), since));
        }
        let rows = self
            .store
            .to_device_since(
                user.user_id.as_str(),
                user.device_id.as_str(),
                since,
                TO_DEVICE_BATCH,
            )
            .await?;
        let next = if rows.len() as i64 == TO_DEVICE_BATCH {
            rows.last().map_or(since, |r| r.stream_position)
        } else {
            current.max(since)
        };
        let events = rows.into_iter().map(to_device_event).collect();
        Ok((events, next))
    }

    // ----- presence -----

    /// `PUT /presence/{userId}/status`.
    pub async fn set_presence(
        &self,
        user: &AuthedUser,
        target: &UserId,
        state: &str,
        status_msg: Option<&str>,
    ) -> Result<()> {
        if user.user_id != target {
            return Err(Error::Forbidden(
                "You may only set your own presence".to_owned(),
            ));
        }
        if !matches!(state, "online" | "offline" | "unavailable") {
            return Err(Error::InvalidParam(format!(
                "Unknown presence state {state}"
            )));
        }
        crate::limits::at_most(
            "status_msg (bytes)",
            status_msg.map_or(0, str::len),
            crate::limits::MAX_STATUS_MSG_BYTES,
        )?;
        self.store
            .set_presence(target.as_str(), state, status_msg, now_millis())
            .await?;
        self.notify.notify();
        self.publish_presence(target, state, status_msg);
        Ok(())
    }

    /// Tells the federation sender of a local user's new presence (for the servers sharing a
    /// room with them): just active, as the change was the user's doing.
    fn publish_presence(&self, user: &UserId, state: &str, status_msg: Option<&str>) {
        let mut presence = serde_json::json!({
            "user_id": user.as_str(),
            "presence": state,
            "last_active_ago": 0,
            "currently_active": state == "online",
        });
        if let Some(status_msg) = status_msg {
            presence["status_msg"] = Value::from(status_msg);
        }
        self.publish(crate::federation::EduNotice::Presence {
            user_id: user.to_string(),
            presence,
        });
    }

    /// A remote user's presence, as their server's `m.presence` EDU tells it (the federation
    /// receiver has checked that the sending server speaks for the user and that the user
    /// shares a room with someone here). `last_active_ago` is milliseconds before now.
    pub async fn set_remote_presence(
        &self,
        user: &UserId,
        state: &str,
        status_msg: Option<&str>,
        last_active_ago: i64,
    ) -> Result<()> {
        if !matches!(state, "online" | "offline" | "unavailable") {
            return Err(Error::InvalidParam(format!(
                "Unknown presence state {state}"
            )));
        }
        crate::limits::at_most(
            "status_msg (bytes)",
            status_msg.map_or(0, str::len),
            crate::limits::MAX_STATUS_MSG_BYTES,
        )?;
        let last_active = now_millis().saturating_sub(last_active_ago.max(0));
        self.store
            .set_presence(user.as_str(), state, status_msg, last_active)
            .await?;
        self.notify.notify();
        Ok(())
    }

    /// Sync's `set_presence`: records the state only when it changed, so syncing does not
    /// write on every request.
    pub async fn presence_on_sync(&self, user: &UserId, state: &str) -> Result<()> {
        let current = self.store.presence(user.as_str()).await?;
        if current.as_ref().is_none_or(|p| p.state != state) {
            let status = current.and_then(|p| p.status_msg);
            self.store
                .set_presence(user.as_str(), state, status.as_deref(), now_millis())
                .await?;
            self.notify.notify();
            self.publish_presence(user, state, status.as_deref());
        }
        Ok(())
    }

    /// `GET /presence/{userId}/status`: for the user themself or someone sharing a room.
    pub async fn presence(&self, reader: &UserId, target: &UserId) -> Result<Value> {
        if reader != target
            && !self
                .store
                .room_mates(reader.as_str())
                .await?
                .iter()
                .any(|u| u == target.as_str())
        {
            return Err(Error::Forbidden(
                "You do not share a room with this user".to_owned(),
            ));
        }
        // A user who never set or synced a presence is offline (the spec's default state).
        let Some(row) = self.store.presence(target.as_str()).await? else {
            return Ok(json!({"presence": "offline"}));
        };
        let mut body = json!({"presence": row.state, "last_active_ago": now_millis().saturating_sub(row.last_active_ts).max(0)});
        if let Some(msg) = row.status_msg {
            body["status_msg"] = json!(msg);
        }
        body["currently_active"] = json!(row.state == "online");
        Ok(body)
    }

    /// `m.presence` events of room mates changed after `since`.
    ///
    /// With `new_mates_since` (an events stream position), the presence of users who became
    /// room mates after it comes too, whenever it was set: a client meeting someone learns their
    /// presence at once.
    pub async fn presence_events(
        &self,
        user: &UserId,
        since: i64,
        new_mates_since: Option<i64>,
    ) -> Result<Vec<Value>> {
        let mates = self.store.room_mates(user.as_str()).await?;
        let mut rows = self.store.presence_of(&mates, since).await?;
        if let Some(position) = new_mates_since {
            let new_mates = self.store.room_mates_since(user.as_str(), position).await?;
            let new_mates: Vec<String> = new_mates
                .into_iter()
                .filter(|mate| !rows.iter().any(|r| &r.user_id == mate))
                .collect();
            rows.extend(self.store.presence_of(&new_mates, 0).await?);
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut content = json!({
                    "presence": row.state,
                    "last_active_ago": now_millis().saturating_sub(row.last_active_ts).max(0),
                    "currently_active": row.state == "online",
                });
                if let Some(msg) = row.status_msg {
                    content["status_msg"] = json!(msg);
                }
                json!({"type": "m.presence", "sender": row.user_id, "content": content})
            })
            .collect())
    }
}

/// `m.receipt` for a room from its receipt rows; private ones only for the reader. `None` when
/// there is nothing to show.
///
/// The format holds one receipt per event, type and user, but a user may have read one event
/// both unthreaded and in a thread: the unthreaded receipt is the one shown, whichever was
/// sent last, as MSC4102 proposes and Synapse does (it says more: the whole room is read up
/// to there).
pub(crate) fn receipt_event(rows: Vec<ReceiptRow>, reader: &UserId) -> Option<Value> {
    let mut content = Map::new();
    for row in rows {
        if row.receipt_type == "m.read.private" && row.user_id != reader.as_str() {
            continue;
        }
        let mut receipt = json!({"ts": row.ts});
        if !row.thread_id.is_empty() {
            receipt["thread_id"] = json!(row.thread_id);
        }
        let by_event = content.entry(row.event_id).or_insert_with(|| json!({}));
        let slot = &mut by_event[&row.receipt_type][&row.user_id];
        if slot.is_null() || (slot.get("thread_id").is_some() && row.thread_id.is_empty()) {
            *slot = receipt;
        }
    }
    (!content.is_empty()).then(|| json!({"type": "m.receipt", "content": content}))
}

/// Whether to-device messages for users of other servers go out through federation (a local
/// user's send) or are skipped (messages another server delivered here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relay {
    ToOtherServers,
    LocalOnly,
}

/// A queued to-device message as a device receives it (in `/sync`, or a dehydrated device's
/// `/events`): `{type, sender, content}`.
pub(crate) fn to_device_event(row: myelin_store::ephemeral::ToDeviceRow) -> Value {
    json!({
        "type": row.event_type,
        "sender": row.sender,
        "content": serde_json::from_str::<Value>(&row.content).unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, thread: &str, event: &str, ts: i64) -> ReceiptRow {
        ReceiptRow {
            user_id: user.to_owned(),
            receipt_type: "m.read".to_owned(),
            thread_id: thread.to_owned(),
            event_id: event.to_owned(),
            ts,
            stream_position: ts,
        }
    }

    /// MSC4102: an event read both unthreaded and in a thread shows the unthreaded receipt,
    /// in either order; receipts on other events keep their thread.
    #[test]
    fn an_unthreaded_receipt_wins_over_a_threaded_one_for_the_same_event() {
        let reader = UserId::parse("@alice:test").unwrap();
        for rows in [
            vec![
                row("@alice:test", "", "$b", 1),
                row("@alice:test", "$a", "$b", 2),
            ],
            vec![
                row("@alice:test", "$a", "$b", 2),
                row("@alice:test", "", "$b", 1),
            ],
        ] {
            let mut rows = rows;
            rows.push(row("@alice:test", "$a", "$c", 3));
            let event = receipt_event(rows, &reader).unwrap();
            let content = &event["content"];
            assert_eq!(content["$b"]["m.read"]["@alice:test"], json!({"ts": 1}));
            assert_eq!(
                content["$c"]["m.read"]["@alice:test"],
                json!({"ts": 3, "thread_id": "$a"})
            );
        }
    }
}

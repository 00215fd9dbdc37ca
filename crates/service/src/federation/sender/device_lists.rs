//! The device-list sender: tells the servers sharing a room with a local user of each change of
//! the user's devices (`m.device_list_update`: keys uploaded for a device, a device renamed or
//! deleted, logged out for good, the account deactivated) and cross-signing keys
//! (`m.signing_key_update`).
//!
//! Driven by the device-list stream, whose `device` and `cross_signing` rows the store writes
//! with each change: a pass, run with the events fan-out after each wake, reads the rows past
//! its persisted position, builds each one's EDU from what is stored now, and writes the EDUs
//! to the durable outbox (one row per destination) in one transaction with the new position.
//! The destination workers deliver them as they do to-device messages, after an outage or a
//! restart too. A device update's `stream_id` is its row's position and its `prev_id` the
//! position of the user's previous `device` row, so a receiver that missed one sees the gap
//! (and `/user/devices` answers with the same numbering).
//!
//! A local user who joins a room has each of their devices announced again
//! (`E2ee::announce_devices`), so that the room's servers that did not share a room with them
//! before learn of their devices (the spec asks for this); servers that did get updates they
//! can apply to what they cached.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering},
};

use myelin_store::device_lists::DeviceListChange;
use ruma::{OwnedServerName, UserId};
use serde_json::{Map, Value, json};

use super::Sender;
use crate::{Result, now_millis};

/// The field of an `m.device_list_update` that marks it as an unchanged device announced again
/// after its user joined a room (not in the spec; other servers ignore it).
pub const ON_JOIN: &str = "org.myelin.on_join";
/// Device-list rows read per pass step.
const DEVICE_LIST_BATCH: i64 = 200;

impl Sender {
    /// Puts the EDUs of the local device-list changes past the persisted position in the outbox
    /// of every server sharing a room with their users, and wakes those servers' workers, until
    /// the position is at the stream's head, `head` (read by the caller).
    pub(super) async fn fan_out_device_lists(self: &Arc<Self>, head: i64) -> Result<()> {
        if head <= self.device_lists_done.load(Ordering::Acquire) {
            return Ok(());
        }
        loop {
            let from = self.store.device_list_fanout_position().await?;
            let (changes, to) = self
                .store
                .device_list_changes_after(from, DEVICE_LIST_BATCH)
                .await?;
            if to <= from {
                self.device_lists_done.fetch_max(from, Ordering::AcqRel);
                return Ok(());
            }
            let mut servers_of: BTreeMap<String, BTreeSet<OwnedServerName>> = BTreeMap::new();
            let mut edus: Vec<(String, &'static str, String)> = Vec::new();
            let mut destinations = BTreeSet::new();
            for change in &changes {
                let Ok(user) = UserId::parse(change.user_id.as_str()) else {
                    continue;
                };
                if user.server_name() != self.server_name {
                    continue;
                }
                if !servers_of.contains_key(&change.user_id) {
                    let servers = self.servers_sharing_rooms_with(&user).await?;
                    servers_of.insert(change.user_id.clone(), servers);
                }
                let servers = &servers_of[&change.user_id];
                if servers.is_empty() {
                    continue;
                }
                let Some((edu_type, content)) = self.device_list_edu(change).await? else {
                    continue;
                };
                let content = content.to_string();
                for server in servers {
                    edus.push((server.to_string(), edu_type, content.clone()));
                    destinations.insert(server.clone());
                }
            }
            if !self
                .store
                .enqueue_device_list_edus(&edus, from, to, now_millis())
                .await?
            {
                // Another process moved the position: it sends these.
                return Ok(());
            }
            for server in &destinations {
                self.wake(server);
            }
        }
    }

    /// The other servers with users joined to a room `user` is joined to.
    async fn servers_sharing_rooms_with(&self, user: &UserId) -> Result<BTreeSet<OwnedServerName>> {
        let mut servers: BTreeSet<OwnedServerName> = self
            .store
            .room_mates_joined(user.as_str())
            .await?
            .iter()
            .filter_map(|mate| UserId::parse(mate.as_str()).ok())
            .map(|mate| mate.server_name().to_owned())
            .collect();
        servers.remove(&self.server_name);
        Ok(servers)
    }

    /// The EDU telling of one change, from what is stored now: `None` when there is nothing to
    /// tell (a cross-signing change that left no keys: the account is gone, and its devices'
    /// deletions say so).
    async fn device_list_edu(
        &self,
        change: &DeviceListChange,
    ) -> Result<Option<(&'static str, Value)>> {
        let user = change.user_id.as_str();
        match (change.kind.as_str(), change.device_id.as_deref()) {
            (kind @ ("device" | "device_on_join"), Some(device_id)) => {
                let prev = self
                    .store
                    .previous_device_change(user, change.position)
                    .await?;
                let device = self.store.federated_device(user, device_id).await?;
                let mut content = Map::new();
                content.insert("user_id".to_owned(), json!(user));
                content.insert("device_id".to_owned(), json!(device_id));
                content.insert("stream_id".to_owned(), json!(change.position));
                content.insert(
                    "prev_id".to_owned(),
                    json!(prev.into_iter().collect::<Vec<i64>>()),
                );
                content.insert("deleted".to_owned(), json!(device.is_none()));
                if kind == "device_on_join" {
                    // Nothing changed: a Myelin receiver notes it without telling its clients.
                    content.insert(ON_JOIN.to_owned(), json!(true));
                }
                if let Some(device) = device {
                    if let Some(keys) = device
                        .keys_json
                        .as_deref()
                        .and_then(|k| serde_json::from_str::<Value>(k).ok())
                    {
                        content.insert("keys".to_owned(), keys);
                    }
                    if let Some(name) = device.display_name {
                        content.insert("device_display_name".to_owned(), json!(name));
                    }
                }
                Ok(Some(("m.device_list_update", Value::Object(content))))
            }
            ("cross_signing", _) => {
                let mut content = Map::new();
                for (_, kind, json) in self.store.cross_signing_keys_of(&[user]).await? {
                    let field = match kind.as_str() {
                        crate::e2ee::MASTER => "master_key",
                        crate::e2ee::SELF_SIGNING => "self_signing_key",
                        // User-signing keys are their owner's alone.
                        _ => continue,
                    };
                    if let Ok(key) = serde_json::from_str::<Value>(&json) {
                        content.insert(field.to_owned(), key);
                    }
                }
                if content.is_empty() {
                    return Ok(None);
                }
                content.insert("user_id".to_owned(), json!(user));
                Ok(Some(("m.signing_key_update", Value::Object(content))))
            }
            _ => Ok(None),
        }
    }
}

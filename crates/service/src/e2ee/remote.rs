//! End-to-end keys across servers.
//!
//! Serving: what other servers may ask about local users (`/user/devices/{userId}`,
//! `/user/keys/query`, `/user/keys/claim`): device keys and the master and self-signing keys
//! (never user-signing keys, nor anyone's signatures by them), and one-time keys claimed as a
//! local claim does. Only local users: a user who does not exist gets an empty answer, so a
//! peer learns nothing more about who exists here.
//!
//! Asking: remote users' keys, one request per server, all servers at once, within the
//! client's timeout. The device list of a remote user this server shares a room with is cached
//! (`store::device_lists`) and served from the cache while it is fresh: their server's
//! `m.device_list_update` EDUs that follow on from it (every `prev_id` already seen) are
//! applied to it; one that does not (a gap) marks it stale and has it fetched again
//! (`/user/devices`) at once, and a stale list is fetched again before it is used. A cache
//! is trusted only while no membership changed in the rooms the user is in since it was
//! filled (this server may have stopped sharing a room with them meanwhile and missed
//! updates), and is dropped when no room is shared any more.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use myelin_store::{
    Store,
    device_lists::{FetchedDeviceList, RemoteDeviceUpdate, RemoteUpdateOutcome},
};
use ruma::{
    OneTimeKeyAlgorithm, OwnedDeviceId, OwnedUserId, ServerName, UserId,
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
    },
    serde::Raw,
};
use serde_json::{Value, json};

use super::{
    ByServer, E2ee, KeysClaimResult, KeysQueryResult, MASTER, MAX_DEVICES_PER_REQUEST, SELF_SIGNING,
};
use crate::{Error, Result, federation::Outbound, notifier::Notifier, now_millis};

/// The most bytes of a remote server's answer about keys (a user with thousands of devices).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// A local user's devices as `/user/devices/{userId}` answers.
#[derive(Debug, Default)]
pub struct UserDevices {
    pub stream_id: i64,
    /// `(device id, device keys, display name)`.
    pub devices: Vec<(String, Value, Option<String>)>,
    pub master_key: Option<Value>,
    pub self_signing_key: Option<Value>,
}

/// An `m.device_list_update` EDU's content, as the federation receiver read it.
#[derive(Debug, Clone)]
pub struct DeviceListEdu {
    pub user: OwnedUserId,
    pub device_id: String,
    pub stream_id: i64,
    pub prev_ids: Vec<i64>,
    pub deleted: bool,
    pub keys: Option<Value>,
    pub display_name: Option<String>,
    /// A Myelin sender's mark: an unchanged device announced again after its user joined a
    /// room (news to local users only if what was cached here is out of date).
    pub on_join: bool,
}

/// A failure entry of `/keys/query` or `/keys/claim` for a server.
fn server_failure(why: &str) -> Value {
    json!({"status": 503, "message": why})
}

/// The JSON of a raw value from another server.
fn value_of<T>(raw: &Raw<T>) -> Option<Value> {
    serde_json::from_str(raw.json().get()).ok()
}

/// Device keys with the device's display name in `unsigned`, as `/keys/query` shows them.
fn with_display_name(mut keys: Value, name: Option<&str>) -> Value {
    if let (Some(object), Some(name)) = (keys.as_object_mut(), name) {
        object.insert("unsigned".to_owned(), json!({"device_display_name": name}));
    }
    keys
}

/// Whether `keys` are `user`'s, of `device` when one is given.
fn keys_belong(keys: &Value, user: &str, device: Option<&str>) -> bool {
    keys.get("user_id").and_then(Value::as_str) == Some(user)
        && device.is_none_or(|d| keys.get("device_id").and_then(Value::as_str) == Some(d))
}

/// Fetches a remote user's whole device list from their server (`/user/devices/{userId}`) and
/// caches it. A free function so that a re-fetch after a gap can run in its own task. A list
/// that an announcement overtook while it was fetched is cached stale, and local users hear of
/// the change (what they are given now may be out of date).
async fn fetch_device_list(
    store: &Store,
    outbound: &Outbound,
    notify: &Notifier,
    user: &UserId,
) -> Result<FetchedDeviceList> {
    let seen = store.remote_list_state(user.as_str()).await?;
    let cached_at = store.events_stream_position().await?;
    let answer = outbound
        .send_limited(
            user.server_name(),
            get_devices::v1::Request::new(user.to_owned()),
            MAX_ANSWER_BYTES,
        )
        .await
        .map_err(|e| Error::BadGateway(format!("{}: {e}", user.server_name())))?;
    if answer.user_id != user {
        return Err(Error::BadGateway(format!(
            "{} answered about {} when asked about {user}",
            user.server_name(),
            answer.user_id
        )));
    }
    let mut list = FetchedDeviceList {
        stream_id: i64::try_from(u64::from(answer.stream_id)).unwrap_or(i64::MAX),
        ..FetchedDeviceList::default()
    };
    for device in answer.devices.iter().take(MAX_DEVICES_PER_REQUEST) {
        let keys = value_of(&device.keys)
            .filter(|k| keys_belong(k, user.as_str(), Some(device.device_id.as_str())));
        list.devices.push((
            device.device_id.to_string(),
            keys.map(|k| k.to_string()),
            device.device_display_name.clone(),
        ));
    }
    for (kind, key) in [
        (MASTER, &answer.master_key),
        (SELF_SIGNING, &answer.self_signing_key),
    ] {
        if let Some(key) = key
            .as_ref()
            .and_then(value_of)
            .filter(|k| keys_belong(k, user.as_str(), None))
        {
            list.cross_signing.push((kind.to_owned(), key.to_string()));
        }
    }
    let fresh = store
        .fill_remote_device_list(
            user.as_str(),
            &list,
            cached_at,
            seen.map(|s| s.updated_ts),
            now_millis(),
        )
        .await?;
    if !fresh {
        store.announce_device_list_change(user.as_str()).await?;
        notify.notify();
    }
    Ok(list)
}

/// What one server's users' keys came to.
#[derive(Debug, Default)]
struct ServerKeys {
    device_keys: BTreeMap<String, BTreeMap<String, Value>>,
    master_keys: BTreeMap<String, Value>,
    self_signing_keys: BTreeMap<String, Value>,
}

impl ServerKeys {
    /// Adds a user's devices (those `devices` names, or all) and cross-signing keys from a list.
    fn add_list(&mut self, user: &UserId, devices: &[String], list: &FetchedDeviceList) {
        let entry = self.device_keys.entry(user.to_string()).or_default();
        for (device_id, keys, name) in &list.devices {
            if !devices.is_empty() && !devices.contains(device_id) {
                continue;
            }
            let Some(keys) = keys.as_deref().and_then(|k| serde_json::from_str(k).ok()) else {
                continue;
            };
            entry.insert(device_id.clone(), with_display_name(keys, name.as_deref()));
        }
        for (kind, key) in &list.cross_signing {
            let Ok(key) = serde_json::from_str::<Value>(key) else {
                continue;
            };
            match kind.as_str() {
                MASTER => self.master_keys.insert(user.to_string(), key),
                SELF_SIGNING => self.self_signing_keys.insert(user.to_string(), key),
                _ => None,
            };
        }
    }
}

impl E2ee {
    fn outbound(&self) -> Result<&Arc<Outbound>> {
        self.federation
            .as_ref()
            .ok_or_else(|| Error::BadGateway("federation is off".to_owned()))
    }

    // ----- serving other servers -----

    /// `GET /_matrix/federation/v1/user/devices/{userId}`: a local user's devices with keys,
    /// their master and self-signing keys, and the device-list stream id the answer is at (the
    /// `prev_id` the next `m.device_list_update` names). A user of another server: 404.
    pub async fn federation_user_devices(&self, user: &UserId) -> Result<UserDevices> {
        if user.server_name() != self.server_name {
            return Err(Error::NotFound(format!(
                "{user} is not a user of this server"
            )));
        }
        // The stream id first: a change after it is announced again with a newer one.
        let stream_id = self.store.device_list_stream_id(user.as_str()).await?;
        let mut answer = UserDevices {
            stream_id,
            ..UserDevices::default()
        };
        for row in self.store.device_keys_of(&[user.as_str()]).await? {
            if let Ok(keys) = serde_json::from_str::<Value>(&row.key_json) {
                answer.devices.push((row.device_id, keys, row.display_name));
            }
        }
        for (_, kind, json) in self.store.cross_signing_keys_of(&[user.as_str()]).await? {
            let Ok(key) = serde_json::from_str::<Value>(&json) else {
                continue;
            };
            match kind.as_str() {
                MASTER => answer.master_key = Some(key),
                SELF_SIGNING => answer.self_signing_key = Some(key),
                _ => {}
            }
        }
        Ok(answer)
    }

    /// `POST /_matrix/federation/v1/user/keys/query`: the device keys and master and
    /// self-signing keys of the local users named (others' are left out).
    pub async fn federation_query_keys(
        &self,
        wanted: &BTreeMap<String, Vec<String>>,
    ) -> Result<KeysQueryResult> {
        let devices_named: usize = wanted.values().map(|d| d.len().max(1)).sum();
        if devices_named > MAX_DEVICES_PER_REQUEST {
            return Err(Error::InvalidParam(format!(
                "At most {MAX_DEVICES_PER_REQUEST} devices per query"
            )));
        }
        let local: Vec<&str> = wanted
            .keys()
            .map(String::as_str)
            .filter(|user| self.is_local(user))
            .collect();
        let mut result = KeysQueryResult::default();
        self.local_keys(None, &local, wanted, &mut result).await?;
        Ok(result)
    }

    /// `POST /_matrix/federation/v1/user/keys/claim`: one key per local device named, claimed
    /// as a local claim is (others' are left out).
    pub async fn federation_claim_keys(
        &self,
        wanted: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<KeysClaimResult> {
        let devices: usize = wanted.values().map(BTreeMap::len).sum();
        if devices > MAX_DEVICES_PER_REQUEST {
            return Err(Error::InvalidParam(format!(
                "At most {MAX_DEVICES_PER_REQUEST} devices per claim"
            )));
        }
        let local: BTreeMap<String, BTreeMap<String, String>> = wanted
            .iter()
            .filter(|(user, _)| self.is_local(user))
            .map(|(user, devices)| (user.clone(), devices.clone()))
            .collect();
        Ok(KeysClaimResult {
            failures: BTreeMap::new(),
            one_time_keys: self.claim_local(&local).await?,
        })
    }

    // ----- asking other servers -----

    /// Adds remote users' keys to `result`: every server at once, each within `timeout`; a
    /// server that fails or is too slow is named in `failures`.
    pub(super) async fn query_remote(
        &self,
        remote: ByServer<Vec<String>>,
        timeout: Duration,
        result: &mut KeysQueryResult,
    ) -> Result<()> {
        let asks = remote.into_iter().map(|(server, users)| async move {
            let outcome = tokio::time::timeout(timeout, self.query_server(&server, &users)).await;
            (server, outcome)
        });
        for (server, outcome) in futures::future::join_all(asks).await {
            match outcome {
                Ok(Ok(keys)) => {
                    result.device_keys.extend(keys.device_keys);
                    result.master_keys.extend(keys.master_keys);
                    result.self_signing_keys.extend(keys.self_signing_keys);
                }
                Ok(Err(err)) => {
                    tracing::debug!(%server, %err, "keys query: server failed");
                    result
                        .failures
                        .insert(server.to_string(), server_failure(&err.to_string()));
                }
                Err(_) => {
                    result
                        .failures
                        .insert(server.to_string(), server_failure("Timed out"));
                }
            }
        }
        Ok(())
    }

    /// A remote user's master key, as their server (or the cache) tells, within the default
    /// timeout; `None` if they have none. Their server failing is the caller's 502.
    pub(super) async fn remote_master_key(&self, user: &UserId) -> Result<Option<Value>> {
        let asked = BTreeMap::from([(user.to_owned(), Vec::new())]);
        match tokio::time::timeout(
            super::DEFAULT_REMOTE_TIMEOUT,
            self.query_server(user.server_name(), &asked),
        )
        .await
        {
            Ok(keys) => Ok(keys?.master_keys.remove(user.as_str())),
            Err(_) => Err(Error::BadGateway(format!(
                "{} did not answer in time",
                user.server_name()
            ))),
        }
    }

    /// One server's users' keys: from the cache where it is fresh, fetched again
    /// (`/user/devices`) for users this server shares a room with, and asked with one
    /// `/user/keys/query` for the others.
    async fn query_server(
        &self,
        server: &ServerName,
        users: &BTreeMap<OwnedUserId, Vec<String>>,
    ) -> Result<ServerKeys> {
        let outbound = self.outbound()?;
        let mut keys = ServerKeys::default();
        let mut ask: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>> = BTreeMap::new();
        let mut refetch = Vec::new();
        for (user, devices) in users {
            if let Some(list) = self.cached_list(user).await? {
                keys.add_list(user, devices, &list);
            } else if self
                .store
                .shares_room_with_server(user.as_str(), self.server_name.as_str())
                .await?
            {
                refetch.push((user, devices));
            } else {
                ask.insert(
                    user.clone(),
                    devices
                        .iter()
                        .map(|d| OwnedDeviceId::from(d.as_str()))
                        .collect(),
                );
            }
        }
        let fetched = futures::future::join_all(
            refetch
                .iter()
                .map(|(user, _)| fetch_device_list(&self.store, outbound, &self.notify, user)),
        )
        .await;
        for ((user, devices), list) in refetch.iter().zip(fetched) {
            keys.add_list(user, devices, &list?);
        }
        if ask.is_empty() {
            return Ok(keys);
        }
        let answer = outbound
            .send_limited(
                server,
                get_keys::v1::Request::new(ask.clone()),
                MAX_ANSWER_BYTES,
            )
            .await
            .map_err(|e| Error::BadGateway(e.to_string()))?;
        // Only what was asked: a server speaks for its own users.
        for (user, devices) in &answer.device_keys {
            let Some(asked) = ask.get(user) else {
                continue;
            };
            let entry = keys.device_keys.entry(user.to_string()).or_default();
            for (device, raw) in devices.iter().take(MAX_DEVICES_PER_REQUEST) {
                if !asked.is_empty() && !asked.contains(device) {
                    continue;
                }
                if let Some(value) =
                    value_of(raw).filter(|v| keys_belong(v, user.as_str(), Some(device.as_str())))
                {
                    entry.insert(device.to_string(), value);
                }
            }
        }
        for (user, raw) in &answer.master_keys {
            if let Some(value) = value_of(raw)
                .filter(|v| ask.contains_key(user) && keys_belong(v, user.as_str(), None))
            {
                keys.master_keys.insert(user.to_string(), value);
            }
        }
        for (user, raw) in &answer.self_signing_keys {
            if let Some(value) = value_of(raw)
                .filter(|v| ask.contains_key(user) && keys_belong(v, user.as_str(), None))
            {
                keys.self_signing_keys.insert(user.to_string(), value);
            }
        }
        Ok(keys)
    }

    /// A remote user's cached list if it can be used: fresh, this server still shares a room
    /// with them, and no membership changed in their rooms since it was filled. A cache that
    /// cannot be used because no room is shared any more is dropped.
    async fn cached_list(&self, user: &UserId) -> Result<Option<FetchedDeviceList>> {
        let Some(state) = self.store.remote_list_state(user.as_str()).await? else {
            return Ok(None);
        };
        let Some(cached_at) = state.cached_at else {
            return Ok(None);
        };
        let ours = self.server_name.as_str();
        if !self
            .store
            .shares_room_with_server(user.as_str(), ours)
            .await?
        {
            self.store.forget_remote_device_list(user.as_str()).await?;
            return Ok(None);
        }
        if state.stale
            || self
                .store
                .shared_rooms_changed_since(user.as_str(), ours, cached_at)
                .await?
        {
            return Ok(None);
        }
        let devices = self
            .store
            .remote_cached_devices(&[user.as_str()])
            .await?
            .into_iter()
            .map(|d| (d.device_id, d.keys_json, d.display_name))
            .collect();
        let cross_signing = self
            .store
            .remote_cached_cross_signing(user.as_str())
            .await?;
        Ok(Some(FetchedDeviceList {
            stream_id: state.stream_id,
            devices,
            cross_signing,
        }))
    }

    /// Claims remote users' keys: one `/user/keys/claim` per server, all at once, each within
    /// `timeout`; a server that fails is named in `failures`.
    pub(super) async fn claim_remote(
        &self,
        remote: ByServer<BTreeMap<String, String>>,
        timeout: Duration,
        result: &mut KeysClaimResult,
    ) {
        let asks = remote.into_iter().map(|(server, users)| async move {
            let outcome = tokio::time::timeout(timeout, self.claim_server(&server, &users)).await;
            (server, outcome)
        });
        for (server, outcome) in futures::future::join_all(asks).await {
            match outcome {
                Ok(Ok(keys)) => result.one_time_keys.extend(keys),
                Ok(Err(err)) => {
                    result
                        .failures
                        .insert(server.to_string(), server_failure(&err.to_string()));
                }
                Err(_) => {
                    result
                        .failures
                        .insert(server.to_string(), server_failure("Timed out"));
                }
            }
        }
    }

    async fn claim_server(
        &self,
        server: &ServerName,
        users: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> Result<BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>>> {
        let outbound = self.outbound()?;
        let claims: claim_keys::v1::OneTimeKeyClaims = users
            .iter()
            .map(|(user, devices)| {
                let devices = devices
                    .iter()
                    .map(|(device, algorithm)| {
                        (
                            OwnedDeviceId::from(device.as_str()),
                            OneTimeKeyAlgorithm::from(algorithm.as_str()),
                        )
                    })
                    .collect();
                (user.clone(), devices)
            })
            .collect();
        let answer = outbound
            .send_limited(
                server,
                claim_keys::v1::Request::new(claims),
                MAX_ANSWER_BYTES,
            )
            .await
            .map_err(|e| Error::BadGateway(e.to_string()))?;
        let mut out: BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>> = BTreeMap::new();
        for (user, devices) in answer.one_time_keys {
            // Only the devices asked about, of users asked about.
            let Some(asked) = users.get(&user) else {
                continue;
            };
            for (device, keys) in devices {
                if !asked.contains_key(device.as_str()) {
                    continue;
                }
                for (key_id, raw) in keys {
                    if let Some(value) = value_of(&raw) {
                        out.entry(user.to_string())
                            .or_default()
                            .entry(device.to_string())
                            .or_default()
                            .insert(key_id.to_string(), value);
                    }
                }
            }
        }
        Ok(out)
    }

    // ----- their servers' announcements -----

    /// A remote user's server announced a change of one of their devices
    /// (`m.device_list_update`; the federation receiver has checked that the server speaks for
    /// the user and that they share a room with someone here). Applied to the cached list when
    /// it follows on from it; otherwise the list is stale, and fetched again at once if
    /// something was cached. Local users sharing a room with them hear of it in sync's
    /// `device_lists.changed`. An old or repeated stream id changes nothing. Returns whether it
    /// was new.
    pub async fn remote_device_list_update(&self, edu: &DeviceListEdu) -> Result<bool> {
        let user = edu.user.as_str();
        let keys = match &edu.keys {
            Some(keys) if !keys_belong(keys, user, Some(&edu.device_id)) => {
                return Err(Error::BadJson(
                    "keys must be the named user's and device's".to_owned(),
                ));
            }
            Some(keys) => Some(keys.to_string()),
            None => None,
        };
        let outcome = self
            .store
            .apply_remote_device_update(
                &RemoteDeviceUpdate {
                    user_id: user,
                    device_id: &edu.device_id,
                    stream_id: edu.stream_id,
                    prev_ids: &edu.prev_ids,
                    deleted: edu.deleted,
                    keys_json: keys.as_deref(),
                    display_name: edu.display_name.as_deref(),
                },
                now_millis(),
            )
            .await?;
        let announce = match outcome {
            RemoteUpdateOutcome::Old => return Ok(false),
            // Local users heard of the join itself; a device announced again on a join is news
            // only where this server had cached something now out of date.
            RemoteUpdateOutcome::Applied => !edu.on_join,
            RemoteUpdateOutcome::Gap { had_cache } => !edu.on_join || had_cache,
        };
        if let (RemoteUpdateOutcome::Gap { had_cache: true }, Some(outbound)) =
            (outcome, &self.federation)
        {
            // An update was missed: what is cached is out of date until fetched again.
            let (store, outbound, notify, user) = (
                self.store.clone(),
                outbound.clone(),
                self.notify.clone(),
                edu.user.clone(),
            );
            tokio::spawn(async move {
                if let Err(err) = fetch_device_list(&store, &outbound, &notify, &user).await {
                    tracing::debug!(%user, %err, "device list re-fetch failed; fetched when next asked");
                }
            });
        }
        if announce {
            self.store.announce_device_list_change(user).await?;
            self.notify.notify();
        }
        Ok(true)
    }

    /// After a local user joined a room: each of their devices is announced again, so that
    /// the device-list sender tells the servers sharing a room with them now (among them the
    /// room's, which may not know the user's devices yet) and local room mates re-query.
    pub async fn announce_devices(&self, user: &UserId) -> Result<()> {
        if self.store.announce_devices(user.as_str()).await? > 0 {
            self.notify.notify();
        }
        Ok(())
    }

    /// A remote user's server announced new cross-signing keys (`m.signing_key_update`, no
    /// stream id): applied to a fresh cached list, else the list is stale; local users sharing a
    /// room with them hear of the change.
    pub async fn remote_signing_keys_update(
        &self,
        user: &UserId,
        master_key: Option<&Value>,
        self_signing_key: Option<&Value>,
    ) -> Result<()> {
        let mut keys = Vec::new();
        for (kind, key) in [(MASTER, master_key), (SELF_SIGNING, self_signing_key)] {
            if let Some(key) = key {
                if !keys_belong(key, user.as_str(), None) {
                    return Err(Error::BadJson(format!("the {kind} key must be {user}'s")));
                }
                keys.push((kind, key.to_string()));
            }
        }
        self.store
            .apply_remote_signing_keys(user.as_str(), &keys, now_millis())
            .await?;
        self.store
            .announce_device_list_change(user.as_str())
            .await?;
        self.notify.notify();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_belong_to_the_named_user_and_device() {
        let keys = json!({"user_id": "@b:x", "device_id": "D", "keys": {}});
        assert!(keys_belong(&keys, "@b:x", Some("D")));
        assert!(keys_belong(&keys, "@b:x", None));
        assert!(!keys_belong(&keys, "@b:x", Some("E")));
        assert!(!keys_belong(&keys, "@c:x", Some("D")));
    }

    #[test]
    fn display_names_go_in_unsigned() {
        let keys = with_display_name(json!({"keys": {}}), Some("Phone"));
        assert_eq!(keys["unsigned"]["device_display_name"], "Phone");
        assert_eq!(with_display_name(json!({"a": 1}), None), json!({"a": 1}));
    }
}

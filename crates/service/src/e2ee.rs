//! End-to-end encryption keys: device keys and one-time/fallback keys (`/keys/upload`,
//! `/keys/query`, `/keys/claim`), cross-signing keys and signatures
//! (`/keys/device_signing/upload`, `/keys/signatures/upload`), and device lists (who a user must
//! re-query keys for: `/keys/changes` and sync's `device_lists`), and the user's dehydrated
//! device (MSC3814, `e2ee/dehydrated.rs`), whose keys take the same upload rules
//! (`CheckedUpload`).
//!
//! The server never sees plaintext: keys are stored as the clients sent them and handed back.
//! What it checks is who may write what (a device uploads only its own keys; the keys of a
//! device its owner's self-signing key has signed are never replaced by different ones, see
//! [`replacement_refused`]) and, for cross-signing, the ed25519 signatures that bind the keys
//! together. Users are keyed by their user id string everywhere, so that the
//! account-key work can map verified account names onto the same rows.
//!
//! Other servers' users' keys are asked of their servers (`/user/keys/query`,
//! `/user/keys/claim`, one request per server, all at once, within the client's `timeout`);
//! a server that does not answer in time is named in `failures`. The devices of remote users
//! this server shares a room with are cached, kept current by their servers'
//! `m.device_list_update` and `m.signing_key_update` EDUs, fetched again (`/user/devices`) when
//! an update does not follow on from what is cached, and dropped when no room is shared any
//! more ([`remote`]). Other servers ask this one the same about local users (the federation
//! half of [`remote`]); local users' device changes reach them through the device-list sender
//! (`federation::sender`). A signature by a local user's user-signing key on another server's
//! user's master key is checked against that key as their server tells it and kept here, shown
//! to the signer only (as for local users' keys; it is not sent to their server).

mod dehydrated;
mod remote;

pub use dehydrated::{DEHYDRATED_EVENTS_BATCH, DehydratedDevicePut, DehydratedEvents};
pub use remote::{DeviceListEdu, UserDevices};

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use myelin_room_version::{PublicKey, canonical::value_to_object, signing::verify_json};
use myelin_store::{
    Store,
    e2ee::{
        CrossSignatureRow, DecideDeviceKeys, DeviceKeysDecision, KeysUpload, NewKey, UploadRefused,
    },
};
use ruma::{OwnedServerName, OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use crate::{Error, Result, accounts::AuthedUser, notifier::Notifier};

/// One-time and fallback keys accepted in one upload.
pub const MAX_KEYS_PER_UPLOAD: usize = 200;
/// Unclaimed one-time keys one device may hold (clients keep about 50 on the server).
pub const MAX_ONE_TIME_KEYS_PER_DEVICE: i64 = 1000;
/// Entries in a device's `keys`, `algorithms` or any signer's `signatures` (clients send two
/// keys and a handful of signatures).
pub const MAX_DEVICE_KEY_ENTRIES: usize = 64;
/// Devices named in one `/keys/query` or `/keys/claim`.
pub const MAX_DEVICES_PER_REQUEST: usize = 10_000;
/// How long a `/keys/query` or `/keys/claim` waits for other servers when the client names no
/// `timeout` (the spec's default).
pub const DEFAULT_REMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a client may make a `/keys/query` or `/keys/claim` wait for other servers.
pub const MAX_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// The cross-signing key types, as `/keys/query` names them.
pub const MASTER: &str = "master";
pub const SELF_SIGNING: &str = "self_signing";
pub const USER_SIGNING: &str = "user_signing";

/// The end-to-end keys area.
#[derive(Debug)]
pub struct E2ee {
    store: Store,
    server_name: OwnedServerName,
    notify: Notifier,
    /// Requests to other servers; `None`: remote users are reported in `failures`.
    federation: Option<Arc<crate::federation::Outbound>>,
}

/// Users of other servers named in a request, by server: user → what is asked of them.
type ByServer<T> = BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>>;

/// A `/keys/query` answer: JSON objects as clients uploaded them (plus `unsigned`).
#[derive(Debug, Default)]
pub struct KeysQueryResult {
    pub failures: BTreeMap<String, Value>,
    pub device_keys: BTreeMap<String, BTreeMap<String, Value>>,
    pub master_keys: BTreeMap<String, Value>,
    pub self_signing_keys: BTreeMap<String, Value>,
    pub user_signing_keys: BTreeMap<String, Value>,
}

/// A `/keys/claim` answer.
#[derive(Debug, Default)]
pub struct KeysClaimResult {
    pub failures: BTreeMap<String, Value>,
    /// user → device → key id → key.
    pub one_time_keys: BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>>,
}

/// Cross-signing keys in an upload.
#[derive(Debug, Default, Clone)]
pub struct CrossSigningUpload {
    pub master_key: Option<Value>,
    pub self_signing_key: Option<Value>,
    pub user_signing_key: Option<Value>,
}

impl CrossSigningUpload {
    fn keys(&self) -> Vec<(&'static str, &Value)> {
        [
            (MASTER, &self.master_key),
            (SELF_SIGNING, &self.self_signing_key),
            (USER_SIGNING, &self.user_signing_key),
        ]
        .into_iter()
        .filter_map(|(kind, key)| key.as_ref().map(|k| (kind, k)))
        .collect()
    }
}

/// Whether two one-time keys are the same key: equal, ignoring signatures (a client that
/// re-uploads after a lost response may have re-signed).
fn same_one_time_key(stored: &str, uploaded: &str) -> bool {
    let strip = |text: &str| -> Option<Value> {
        let mut value: Value = serde_json::from_str(text).ok()?;
        if let Some(object) = value.as_object_mut() {
            object.remove("signatures");
        }
        Some(value)
    };
    match (strip(stored), strip(uploaded)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Why `stored`, the keys of `user_id`'s `device_id`, may not be replaced by different ones, if
/// they may not: once the user's self-signing key (or any key of the user's but the device's
/// own) has signed them, the device is verified, and other users trust exactly those keys;
/// new keys need a new device. Until then a device may replace its keys (announced as a
/// device-list change), as Synapse allows and Complement's `TestDeviceListUpdates` expects.
fn replacement_refused(stored: &Value, user_id: &str, device_id: &str) -> Option<String> {
    let own_key = format!("ed25519:{device_id}");
    let cross_signed = stored["signatures"][user_id]
        .as_object()
        .is_some_and(|sigs| sigs.keys().any(|key_id| *key_id != own_key));
    cross_signed.then(|| {
        format!(
            "Device {device_id} is cross-signed; its keys cannot be replaced (log in as a new device)"
        )
    })
}

/// What identifies a device's keys: everything but signatures and `unsigned`.
fn identity_of(keys: &Value) -> Value {
    let mut copy = keys.clone();
    if let Some(object) = copy.as_object_mut() {
        object.remove("signatures");
        object.remove("unsigned");
    }
    copy
}

/// `stored` with the signatures of `extra` added (the stored ones win no ties: a signature under
/// the same key id is the same signature or a re-signing, either is valid).
fn merge_signatures(stored: &Value, extra: &Value) -> Value {
    let mut merged = stored.clone();
    let Some(extra) = extra.get("signatures").and_then(Value::as_object) else {
        return merged;
    };
    let Some(object) = merged.as_object_mut() else {
        return merged;
    };
    let signatures = object
        .entry("signatures")
        .or_insert_with(|| Value::Object(Map::new()));
    if !signatures.is_object() {
        *signatures = Value::Object(Map::new());
    }
    if let Some(signatures) = signatures.as_object_mut() {
        for (entity, sigs) in extra {
            let Some(sigs) = sigs.as_object() else {
                continue;
            };
            let entry = signatures
                .entry(entity.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(entry) = entry.as_object_mut() {
                for (key_id, sig) in sigs {
                    entry.insert(key_id.clone(), sig.clone());
                }
            }
        }
    }
    merged
}

/// The single `ed25519:<key>` entry of a cross-signing key: `(key id, public key)`.
fn cross_signing_public_key(key: &Value) -> Option<(String, String)> {
    let keys = key.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, value) = keys.iter().next()?;
    let public = value.as_str()?;
    (id.strip_prefix("ed25519:")? == public).then(|| (id.clone(), public.to_owned()))
}

/// Checks that `signed` carries a valid signature by `entity` under `key_id` with the base64
/// ed25519 `public` key.
fn check_signature(signed: &Value, entity: &str, key_id: &str, public: &str) -> Result<()> {
    let invalid = |why: String| Error::InvalidSignature(why);
    let key = PublicKey::from_base64(public)
        .map_err(|e| invalid(format!("{key_id} of {entity} is not an ed25519 key: {e}")))?;
    let object = value_to_object(signed.clone())
        .map_err(|e| Error::BadJson(format!("the signed object is not canonical JSON: {e}")))?;
    verify_json(&object, entity, key_id, &key).map_err(|e| invalid(e.to_string()))
}

/// The `ed25519:<device>` key of a device's keys.
fn device_ed25519(keys: &Value, device_id: &str) -> Option<String> {
    keys.get("keys")?
        .get(format!("ed25519:{device_id}"))?
        .as_str()
        .map(str::to_owned)
}

/// One per-key failure of `/keys/signatures/upload`.
fn failure(errcode: &str, error: impl Into<String>) -> Value {
    json!({"errcode": errcode, "error": error.into()})
}

impl E2ee {
    pub fn new(store: Store, server_name: OwnedServerName, notify: Notifier) -> Self {
        E2ee {
            store,
            server_name,
            notify,
            federation: None,
        }
    }

    /// Asks other servers about their users' keys (else they are reported in `failures`).
    pub fn with_federation(mut self, outbound: Arc<crate::federation::Outbound>) -> Self {
        self.federation = Some(outbound);
        self
    }

    fn is_local(&self, user_id: &str) -> bool {
        UserId::parse(user_id).is_ok_and(|u| u.server_name() == self.server_name)
    }

    // ----- device keys, one-time and fallback keys -----

    /// `POST /keys/upload` by `device`. Returns the device's one-time key counts.
    pub async fn upload_keys(
        &self,
        device: &AuthedUser,
        device_keys: Option<Value>,
        one_time_keys: Vec<(String, Value)>,
        fallback_keys: Vec<(String, Value)>,
    ) -> Result<BTreeMap<String, i64>> {
        let checked = CheckedUpload::check(
            device.user_id.as_str(),
            device.device_id.as_str(),
            device_keys,
            one_time_keys,
            fallback_keys,
        )?;
        let decide = |stored: Option<&str>| checked.decide(stored);
        match self
            .store
            .upload_keys(&checked.store_upload(&decide))
            .await?
        {
            Ok(announced) => {
                if announced.is_some() {
                    self.notify.notify();
                }
            }
            Err(refused) => return Err(upload_refusal(refused)),
        }
        Ok(self.one_time_key_counts(device).await?.0)
    }

    /// A device's one-time key counts per algorithm (always with `signed_curve25519`, which
    /// clients look for) and the algorithms of its unused fallback keys.
    pub async fn one_time_key_counts(
        &self,
        device: &AuthedUser,
    ) -> Result<(BTreeMap<String, i64>, Vec<String>)> {
        let (counts, fallbacks) = self
            .store
            .one_time_key_counts(device.user_id.as_str(), device.device_id.as_str())
            .await?;
        let mut counts: BTreeMap<String, i64> = counts.into_iter().collect();
        counts.entry("signed_curve25519".to_owned()).or_insert(0);
        Ok((counts, fallbacks))
    }

    /// `POST /keys/query`: device keys and cross-signing keys of local users (`user_signing`
    /// only for the requester's own), and of remote users as their servers (or this server's
    /// cache) tell, waiting at most `timeout` for them; servers that failed go in `failures`.
    pub async fn query_keys(
        &self,
        requester: &UserId,
        wanted: &BTreeMap<String, Vec<String>>,
        timeout: Duration,
    ) -> Result<KeysQueryResult> {
        let mut result = KeysQueryResult::default();
        let mut local: Vec<&str> = Vec::new();
        let mut remote: ByServer<Vec<String>> = BTreeMap::new();
        let devices_named: usize = wanted.values().map(|d| d.len().max(1)).sum();
        if devices_named > MAX_DEVICES_PER_REQUEST {
            return Err(Error::InvalidParam(format!(
                "At most {MAX_DEVICES_PER_REQUEST} devices per query"
            )));
        }
        let account_keys = self.remote_account_keys_named(wanted.keys()).await?;
        for (user, devices) in wanted {
            if self.is_local(user) {
                local.push(user);
            } else if account_keys.contains(user.as_str()) {
                // An account key names a room member, not an account: E2EE goes by account
                // names (MSC4243.md §2.7), so nobody is asked about a key (an unverified one has
                // no account to ask for; a verified one is asked about under its name).
                continue;
            } else if let Ok(remote_user) = UserId::parse(user.as_str()) {
                remote
                    .entry(remote_user.server_name().to_owned())
                    .or_default()
                    .insert(remote_user, devices.clone());
            }
        }
        self.local_keys(Some(requester), &local, wanted, &mut result)
            .await?;
        if !remote.is_empty() {
            self.query_remote(remote, timeout, &mut result).await?;
        }
        self.add_requester_signatures(requester, &mut result)
            .await?;
        Ok(result)
    }

    /// Which of `users` are other servers' account keys in key form (`@<key>:<domain>`) that
    /// this server knows from account-key rooms.
    async fn remote_account_keys_named(
        &self,
        users: impl Iterator<Item = &String>,
    ) -> Result<std::collections::HashSet<String>> {
        let key_forms: Vec<String> = users
            .filter(|user| {
                !self.is_local(user.as_str())
                    && myelin_room_version::KeyFormUserId::parse(user.as_str()).is_ok()
            })
            .cloned()
            .collect();
        if key_forms.is_empty() {
            return Ok(Default::default());
        }
        Ok(self
            .store
            .account_keys_by_user_ids(&key_forms)
            .await?
            .into_iter()
            .map(|row| row.user_id)
            .collect())
    }

    /// The keys of local users `local` (devices as `wanted` names them; every user named gets
    /// an entry, empty for one with no devices or who does not exist). With a `requester`, their
    /// own user-signing key is added.
    async fn local_keys(
        &self,
        requester: Option<&UserId>,
        local: &[&str],
        wanted: &BTreeMap<String, Vec<String>>,
        result: &mut KeysQueryResult,
    ) -> Result<()> {
        for user in local {
            result
                .device_keys
                .insert((*user).to_owned(), BTreeMap::new());
        }
        for row in self.store.device_keys_of(local).await? {
            let asked = &wanted[&row.user_id];
            if !asked.is_empty() && !asked.contains(&row.device_id) {
                continue;
            }
            let Ok(mut keys) = serde_json::from_str::<Value>(&row.key_json) else {
                continue;
            };
            if let (Some(object), Some(name)) = (keys.as_object_mut(), row.display_name) {
                object.insert("unsigned".to_owned(), json!({"device_display_name": name}));
            }
            result
                .device_keys
                .entry(row.user_id)
                .or_default()
                .insert(row.device_id, keys);
        }
        for (user, key_type, json) in self.store.cross_signing_keys_of(local).await? {
            let Ok(key) = serde_json::from_str::<Value>(&json) else {
                continue;
            };
            match key_type.as_str() {
                MASTER => {
                    result.master_keys.insert(user, key);
                }
                SELF_SIGNING => {
                    result.self_signing_keys.insert(user, key);
                }
                USER_SIGNING if requester.is_some_and(|r| user == r.as_str()) => {
                    result.user_signing_keys.insert(user, key);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Adds the requester's own signatures on other users' master keys (theirs to see only),
    /// local users' and remote users' alike.
    async fn add_requester_signatures(
        &self,
        requester: &UserId,
        result: &mut KeysQueryResult,
    ) -> Result<()> {
        let targets: Vec<&str> = result.master_keys.keys().map(String::as_str).collect();
        if targets.is_empty() {
            return Ok(());
        }
        for sig in self
            .store
            .cross_signatures_by(requester.as_str(), &targets)
            .await?
        {
            let Some(master) = result.master_keys.get_mut(&sig.target_user_id) else {
                continue;
            };
            if cross_signing_public_key(master).is_some_and(|(id, _)| id == sig.target_key_id) {
                let extra =
                    json!({"signatures": {sig.signer_user_id: {sig.signer_key_id: sig.signature}}});
                *master = merge_signatures(master, &extra);
            }
        }
        Ok(())
    }

    /// `POST /keys/claim`: one key per device asked for (a one-time key, else the fallback key),
    /// local users' here, remote users' from their servers within `timeout` (servers that
    /// failed go in `failures`).
    pub async fn claim_keys(
        &self,
        wanted: &BTreeMap<String, BTreeMap<String, String>>,
        timeout: Duration,
    ) -> Result<KeysClaimResult> {
        let mut result = KeysClaimResult::default();
        let devices: usize = wanted.values().map(BTreeMap::len).sum();
        if devices > MAX_DEVICES_PER_REQUEST {
            return Err(Error::InvalidParam(format!(
                "At most {MAX_DEVICES_PER_REQUEST} devices per claim"
            )));
        }
        let mut remote: ByServer<BTreeMap<String, String>> = BTreeMap::new();
        let mut local = BTreeMap::new();
        for (user, devices) in wanted {
            if self.is_local(user) {
                local.insert(user.clone(), devices.clone());
            } else if let Ok(remote_user) = UserId::parse(user.as_str()) {
                remote
                    .entry(remote_user.server_name().to_owned())
                    .or_default()
                    .insert(remote_user, devices.clone());
            }
        }
        result.one_time_keys = self.claim_local(&local).await?;
        if !remote.is_empty() {
            self.claim_remote(remote, timeout, &mut result).await;
        }
        Ok(result)
    }

    /// Claims keys of local users' devices: user → device → key id → key.
    async fn claim_local(
        &self,
        wanted: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>>> {
        let mut local = Vec::new();
        for (user, devices) in wanted {
            for (device, algorithm) in devices {
                local.push((user.clone(), device.clone(), algorithm.clone()));
            }
        }
        let mut claimed: BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>> =
            BTreeMap::new();
        for key in self.store.claim_keys(&local).await? {
            let Ok(value) = serde_json::from_str::<Value>(&key.key_json) else {
                continue;
            };
            claimed
                .entry(key.user_id)
                .or_default()
                .entry(key.device_id)
                .or_default()
                .insert(key.key_id, value);
        }
        Ok(claimed)
    }

    // ----- device lists -----

    /// Whose device lists `user` must refresh, between two positions: `(changed, left)`.
    /// `changed`: users sharing a room with `user` now whose devices or keys changed, or who
    /// came to share a room (by a membership change after `since_events`); `left`: users whose
    /// or whose rooms' membership changed and who share no room with `user` any more.
    pub async fn device_list_delta(
        &self,
        user: &UserId,
        since_events: i64,
        since_lists: i64,
        now_lists: i64,
        memberships_may_have_changed: bool,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let mut key_changes: BTreeSet<String> = BTreeSet::new();
        if now_lists > since_lists {
            key_changes.extend(
                self.store
                    .device_list_changes(since_lists, now_lists)
                    .await?,
            );
        }
        let mut moved: BTreeSet<String> = BTreeSet::new();
        if memberships_may_have_changed {
            moved.extend(
                self.store
                    .device_list_membership_changes(user.as_str(), since_events)
                    .await?
                    .into_iter()
                    .map(|c| c.user_id),
            );
        }
        if key_changes.is_empty() && moved.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let all: Vec<&str> = key_changes
            .iter()
            .chain(moved.iter())
            .map(String::as_str)
            .collect();
        let sharing = self.store.sharing_a_room(user.as_str(), &all).await?;
        let shares = |u: &str| sharing.get(u).copied().unwrap_or(false);
        let mut changed = BTreeSet::new();
        let mut left = BTreeSet::new();
        for u in &key_changes {
            if shares(u) {
                changed.insert(u.clone());
            }
        }
        for u in &moved {
            if shares(u) {
                changed.insert(u.clone());
            } else {
                left.insert(u.clone());
            }
        }
        Ok((changed.into_iter().collect(), left.into_iter().collect()))
    }

    // ----- cross-signing -----

    /// Whether uploading these cross-signing keys needs user-interactive authentication: not
    /// when the user has no master key yet, nor when every key is the one already stored
    /// (MSC3967); replacing a key does.
    pub async fn cross_signing_upload_needs_uia(
        &self,
        user: &UserId,
        upload: &CrossSigningUpload,
    ) -> Result<bool> {
        let stored = self.stored_cross_signing_keys(user).await?;
        if !stored.contains_key(MASTER) {
            return Ok(false);
        }
        Ok(upload
            .keys()
            .into_iter()
            .any(|(kind, key)| stored.get(kind) != Some(key)))
    }

    async fn stored_cross_signing_keys(&self, user: &UserId) -> Result<BTreeMap<String, Value>> {
        Ok(self
            .store
            .cross_signing_keys_of(&[user.as_str()])
            .await?
            .into_iter()
            .filter_map(|(_, kind, json)| Some((kind, serde_json::from_str(&json).ok()?)))
            .collect())
    }

    /// `POST /keys/device_signing/upload` (after any UIA): checks each key (owner, usage, one
    /// ed25519 key) and that the self-signing and user-signing keys are signed by the master key
    /// (the uploaded one, else the stored one), then stores them all or none.
    pub async fn upload_cross_signing_keys(
        &self,
        user: &UserId,
        upload: &CrossSigningUpload,
    ) -> Result<()> {
        let keys = upload.keys();
        if keys.is_empty() {
            return Ok(());
        }
        let stored = self.stored_cross_signing_keys(user).await?;
        let mut checked: Vec<(&str, Value)> = Vec::new();
        for (kind, key) in &keys {
            check_cross_signing_key(key, user, kind)?;
        }
        let master = match upload.master_key.as_ref().or(stored.get(MASTER)) {
            Some(master) => master,
            None => {
                return Err(Error::MissingParam(
                    "A master key is needed before other cross-signing keys".to_owned(),
                ));
            }
        };
        let (master_id, master_public) = cross_signing_public_key(master)
            .ok_or_else(|| Error::InvalidParam("The master key has no ed25519 key".to_owned()))?;
        for (kind, key) in keys {
            if kind != MASTER {
                check_signature(key, user.as_str(), &master_id, &master_public).map_err(
                    |e| match e {
                        Error::InvalidSignature(why) => Error::InvalidSignature(format!(
                            "The {kind} key is not signed by the master key: {why}"
                        )),
                        other => other,
                    },
                )?;
            }
            let mut key = key.clone();
            if let Some(object) = key.as_object_mut() {
                object.remove("unsigned");
            }
            checked.push((kind, key));
        }
        let rows: Vec<(&str, String)> = checked
            .iter()
            .map(|(kind, key)| (*kind, key.to_string()))
            .collect();
        self.store
            .set_cross_signing_keys(user.as_str(), &rows)
            .await?;
        self.notify.notify();
        Ok(())
    }

    /// `POST /keys/signatures/upload`: each signed object checked on its own. Own devices may be
    /// signed by the self-signing key, the own master key by the own devices, and other users'
    /// master keys (of this server or another) by the own user-signing key. Returns the
    /// failures, user → key id → error.
    pub async fn upload_signatures(
        &self,
        signer: &UserId,
        signed: BTreeMap<String, BTreeMap<String, Value>>,
    ) -> Result<BTreeMap<String, BTreeMap<String, Value>>> {
        let mut failures: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
        let own_cross = self.stored_cross_signing_keys(signer).await?;
        let own_devices: BTreeMap<String, Value> = self
            .store
            .device_keys_of(&[signer.as_str()])
            .await?
            .into_iter()
            .filter_map(|row| Some((row.device_id, serde_json::from_str(&row.key_json).ok()?)))
            .collect();
        let mut cross_rows = Vec::new();
        for (target_user, keys) in signed {
            for (key_id, object) in keys {
                let outcome = if target_user == signer.as_str() {
                    self.sign_own_key(signer, &key_id, &object, &own_cross, &own_devices)
                        .await
                } else {
                    self.sign_other_master(signer, &target_user, &key_id, &object, &own_cross)
                        .await
                        .map(|row| cross_rows.push(row))
                };
                if let Err(err) = outcome {
                    let value = match err {
                        Error::InvalidSignature(why) => failure("M_INVALID_SIGNATURE", why),
                        Error::NotFound(why) => failure("M_NOT_FOUND", why),
                        Error::InvalidParam(why) | Error::BadJson(why) => {
                            failure("M_INVALID_PARAM", why)
                        }
                        // The target's server did not tell their master key.
                        Error::BadGateway(why) => failure("M_UNKNOWN", why),
                        other => return Err(other),
                    };
                    failures
                        .entry(target_user.clone())
                        .or_default()
                        .insert(key_id, value);
                }
            }
        }
        if !cross_rows.is_empty() {
            self.store.add_cross_signatures(&cross_rows).await?;
            self.notify.notify();
        }
        Ok(failures)
    }

    /// A signature on one of the signer's own keys: a device (by the self-signing key) or the
    /// master key (by one of the signer's devices). Stored merged into the key.
    async fn sign_own_key(
        &self,
        signer: &UserId,
        key_id: &str,
        object: &Value,
        own_cross: &BTreeMap<String, Value>,
        own_devices: &BTreeMap<String, Value>,
    ) -> Result<()> {
        let user = signer.as_str();
        let new_signatures = |stored: &Value| -> Vec<(String, String)> {
            object["signatures"][user]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(id, sig)| stored["signatures"][user].get(id.as_str()) != Some(sig))
                .filter_map(|(id, sig)| Some((id.clone(), sig.as_str()?.to_owned())))
                .collect()
        };
        if let Some(stored) = own_devices.get(key_id) {
            if identity_of(stored) != identity_of(object) {
                return Err(Error::InvalidParam(
                    "The signed device keys differ from the stored ones".to_owned(),
                ));
            }
            let self_signing = own_cross
                .get(SELF_SIGNING)
                .and_then(cross_signing_public_key)
                .ok_or_else(|| Error::NotFound("No self-signing key".to_owned()))?;
            let added = new_signatures(stored);
            if added.is_empty() {
                return Err(Error::InvalidSignature("No new signature".to_owned()));
            }
            for (sig_key_id, _) in &added {
                if *sig_key_id != self_signing.0 {
                    return Err(Error::InvalidSignature(format!(
                        "{sig_key_id} is not the self-signing key"
                    )));
                }
                check_signature(object, user, sig_key_id, &self_signing.1)?;
            }
            let merged = merge_signatures(stored, object);
            self.store
                .set_device_keys_json(user, key_id, &merged.to_string())
                .await?;
            self.notify.notify();
            return Ok(());
        }
        let Some(master) = own_cross.get(MASTER) else {
            return Err(Error::NotFound(format!("Unknown key {key_id}")));
        };
        let Some((_, master_public)) = cross_signing_public_key(master) else {
            return Err(Error::NotFound(format!("Unknown key {key_id}")));
        };
        if master_public != key_id {
            return Err(Error::NotFound(format!("Unknown key {key_id}")));
        }
        if identity_of(master) != identity_of(object) {
            return Err(Error::InvalidParam(
                "The signed master key differs from the stored one".to_owned(),
            ));
        }
        let added = new_signatures(master);
        if added.is_empty() {
            return Err(Error::InvalidSignature("No new signature".to_owned()));
        }
        for (sig_key_id, _) in &added {
            // Devices sign the master key with their own ed25519 key.
            let device = sig_key_id.strip_prefix("ed25519:").unwrap_or_default();
            let public = own_devices
                .get(device)
                .and_then(|keys| device_ed25519(keys, device))
                .ok_or_else(|| {
                    Error::InvalidSignature(format!("{sig_key_id} is not a device of {user}"))
                })?;
            check_signature(object, user, sig_key_id, &public)?;
        }
        let merged = merge_signatures(master, object);
        self.store
            .set_cross_signing_keys(user, &[(MASTER, merged.to_string())])
            .await?;
        self.notify.notify();
        Ok(())
    }

    /// A signature by the signer's user-signing key on another local user's master key.
    async fn sign_other_master(
        &self,
        signer: &UserId,
        target_user: &str,
        key_id: &str,
        object: &Value,
        own_cross: &BTreeMap<String, Value>,
    ) -> Result<CrossSignatureRow> {
        let target = UserId::parse(target_user)
            .map_err(|_| Error::InvalidParam(format!("{target_user} is not a user ID")))?;
        // Another server's user: their master key as their server (or the cache) tells; the
        // signature is kept here and shown to the signer, as for a local user's key.
        let master = if self.is_local(target_user) {
            self.stored_cross_signing_keys(&target)
                .await?
                .remove(MASTER)
        } else {
            self.remote_master_key(&target).await?
        }
        .ok_or_else(|| Error::NotFound(format!("{target_user} has no master key")))?;
        let (master_id, master_public) = cross_signing_public_key(&master)
            .ok_or_else(|| Error::NotFound(format!("{target_user} has no master key")))?;
        if master_public != key_id {
            return Err(Error::NotFound(format!("Unknown key {key_id}")));
        }
        if identity_of(&master) != identity_of(object) {
            return Err(Error::InvalidParam(
                "The signed master key differs from the stored one".to_owned(),
            ));
        }
        let (usk_id, usk_public) = own_cross
            .get(USER_SIGNING)
            .and_then(cross_signing_public_key)
            .ok_or_else(|| Error::NotFound("No user-signing key".to_owned()))?;
        let signature = object["signatures"][signer.as_str()][&usk_id]
            .as_str()
            .ok_or_else(|| {
                Error::InvalidSignature("No signature by the user-signing key".to_owned())
            })?
            .to_owned();
        check_signature(object, signer.as_str(), &usk_id, &usk_public)?;
        Ok(CrossSignatureRow {
            signer_user_id: signer.to_string(),
            signer_key_id: usk_id,
            target_user_id: target_user.to_owned(),
            target_key_id: master_id,
            signature,
        })
    }
}

/// A key upload for one device that passed the `/keys/upload` rules that need no stored keys
/// (sizes, shapes, the owner); [`CheckedUpload::decide`] is the rule against the stored keys,
/// which the store applies inside its write. `/keys/upload` and the dehydrated device's keys
/// both go through it.
#[derive(Debug)]
struct CheckedUpload {
    user_id: String,
    device_id: String,
    device_keys: Option<Value>,
    one_time_keys: Vec<NewKey>,
    fallback_keys: Vec<NewKey>,
}

impl CheckedUpload {
    fn check(
        user_id: &str,
        device_id: &str,
        device_keys: Option<Value>,
        one_time_keys: Vec<(String, Value)>,
        fallback_keys: Vec<(String, Value)>,
    ) -> Result<Self> {
        if one_time_keys.len() + fallback_keys.len() > MAX_KEYS_PER_UPLOAD {
            return Err(Error::InvalidParam(format!(
                "At most {MAX_KEYS_PER_UPLOAD} one-time and fallback keys per upload"
            )));
        }
        let device_keys = match device_keys {
            None => None,
            Some(keys) => Some(check_device_keys(keys, user_id, device_id)?),
        };
        Ok(CheckedUpload {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            device_keys,
            one_time_keys: new_keys(one_time_keys)?,
            fallback_keys: new_keys(fallback_keys)?,
        })
    }

    /// The uploaded device keys against the stored ones: new keys are stored, more signatures
    /// on the same keys merged in, different keys refused (a device's keys are never replaced).
    fn decide(&self, stored: Option<&str>) -> DeviceKeysDecision {
        let Some(new) = self.device_keys.as_ref() else {
            return DeviceKeysDecision::Keep;
        };
        let Some(stored) = stored.and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
            return DeviceKeysDecision::Store(new.to_string());
        };
        if identity_of(&stored) != identity_of(new) {
            if let Some(why) = replacement_refused(&stored, &self.user_id, &self.device_id) {
                return DeviceKeysDecision::Refuse(why);
            }
            // New keys, announced as a device-list change; the old keys' signatures are about
            // other keys and go with them.
            return DeviceKeysDecision::Store(new.to_string());
        }
        let merged = merge_signatures(&stored, new);
        if merged == stored {
            DeviceKeysDecision::Keep
        } else {
            DeviceKeysDecision::Store(merged.to_string())
        }
    }

    /// The upload as the store runs it, with `decide` (this upload's [`CheckedUpload::decide`]).
    fn store_upload<'a>(&'a self, decide: DecideDeviceKeys<'a>) -> KeysUpload<'a> {
        KeysUpload {
            user_id: &self.user_id,
            device_id: &self.device_id,
            device_keys: self.device_keys.as_ref().map(|_| decide),
            one_time_keys: &self.one_time_keys,
            fallback_keys: &self.fallback_keys,
            same_key: same_one_time_key,
            max_one_time_keys: MAX_ONE_TIME_KEYS_PER_DEVICE,
            now: crate::now_millis(),
        }
    }
}

/// The client's error for an upload the store refused.
fn upload_refusal(refused: UploadRefused) -> Error {
    match refused {
        UploadRefused::DeviceKeys(why) => Error::InvalidParam(why),
        UploadRefused::OneTimeKeyConflict(key_id) => Error::InvalidParam(format!(
            "One-time key {key_id} already exists with different content"
        )),
        UploadRefused::TooManyOneTimeKeys => Error::InvalidParam(format!(
            "A device may hold at most {MAX_ONE_TIME_KEYS_PER_DEVICE} one-time keys"
        )),
    }
}

/// Checks uploaded device keys: an object naming the uploading user and device, with
/// `algorithms` and `keys`. Returns it without `unsigned` (the server writes that).
fn check_device_keys(keys: Value, user_id: &str, device_id: &str) -> Result<Value> {
    let Value::Object(mut object) = keys else {
        return Err(Error::BadJson("device_keys must be an object".to_owned()));
    };
    if object.get("user_id").and_then(Value::as_str) != Some(user_id) {
        return Err(Error::InvalidParam(format!(
            "device_keys.user_id must be {user_id}"
        )));
    }
    if object.get("device_id").and_then(Value::as_str) != Some(device_id) {
        return Err(Error::InvalidParam(format!(
            "device_keys.device_id must be {device_id}"
        )));
    }
    let algorithms_ok = object
        .get("algorithms")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().all(Value::is_string));
    let keys_ok = object
        .get("keys")
        .and_then(Value::as_object)
        .is_some_and(|k| !k.is_empty() && k.values().all(Value::is_string));
    if !algorithms_ok || !keys_ok {
        return Err(Error::BadJson(
            "device_keys needs algorithms (strings) and keys (an object of strings)".to_owned(),
        ));
    }
    let too_many = |v: Option<&Value>| match v {
        Some(Value::Array(a)) => a.len() > MAX_DEVICE_KEY_ENTRIES,
        Some(Value::Object(o)) => {
            o.len() > MAX_DEVICE_KEY_ENTRIES
                || o.values().any(|inner| {
                    inner
                        .as_object()
                        .is_some_and(|i| i.len() > MAX_DEVICE_KEY_ENTRIES)
                })
        }
        _ => false,
    };
    if ["algorithms", "keys", "signatures"]
        .iter()
        .any(|field| too_many(object.get(*field)))
    {
        return Err(Error::InvalidParam(format!(
            "At most {MAX_DEVICE_KEY_ENTRIES} algorithms, keys or signatures per device"
        )));
    }
    if object.get("signatures").is_some_and(|s| !s.is_object()) {
        return Err(Error::BadJson("signatures must be an object".to_owned()));
    }
    object.remove("unsigned");
    Ok(Value::Object(object))
}

/// One-time or fallback keys to store: `<algorithm>:<id>` → a string or an object.
fn new_keys(keys: Vec<(String, Value)>) -> Result<Vec<NewKey>> {
    keys.into_iter()
        .map(|(key_id, value)| {
            let Some((algorithm, id)) = key_id.split_once(':') else {
                return Err(Error::InvalidParam(format!(
                    "Key id {key_id} is not <algorithm>:<id>"
                )));
            };
            if algorithm.is_empty() || id.is_empty() {
                return Err(Error::InvalidParam(format!(
                    "Key id {key_id} is not <algorithm>:<id>"
                )));
            }
            let value = match value {
                Value::Object(mut object) => {
                    // `fallback: true` is the client's marker; the table says which is which.
                    object.remove("unsigned");
                    Value::Object(object)
                }
                Value::String(s) => Value::String(s),
                _ => {
                    return Err(Error::BadJson(format!(
                        "Key {key_id} must be a string or an object"
                    )));
                }
            };
            Ok(NewKey {
                algorithm: algorithm.to_owned(),
                key_id: key_id.clone(),
                key_json: value.to_string(),
            })
        })
        .collect()
}

/// Checks a cross-signing key's owner, usage and key.
fn check_cross_signing_key(key: &Value, user: &UserId, kind: &str) -> Result<()> {
    if !key.is_object() {
        return Err(Error::BadJson(format!("The {kind} key must be an object")));
    }
    if key.get("user_id").and_then(Value::as_str) != Some(user.as_str()) {
        return Err(Error::InvalidParam(format!(
            "The {kind} key must belong to {user}"
        )));
    }
    let usage_ok = key
        .get("usage")
        .and_then(Value::as_array)
        .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(kind)));
    if !usage_ok {
        return Err(Error::InvalidParam(format!(
            "The {kind} key's usage must include {kind}"
        )));
    }
    let (_, public) = cross_signing_public_key(key).ok_or_else(|| {
        Error::InvalidParam(format!(
            "The {kind} key must hold exactly one key, ed25519:<key> → <key>"
        ))
    })?;
    PublicKey::from_base64(&public)
        .map_err(|e| Error::InvalidParam(format!("The {kind} key is not an ed25519 key: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_time_keys_match_ignoring_signatures() {
        let a = r#"{"key":"abc","signatures":{"@a:x":{"ed25519:D":"s1"}}}"#;
        let b = r#"{"key":"abc","signatures":{"@a:x":{"ed25519:D":"s2"}}}"#;
        let c = r#"{"key":"abd"}"#;
        assert!(same_one_time_key(a, b));
        assert!(!same_one_time_key(a, c));
        assert!(same_one_time_key(r#""k""#, r#""k""#));
        assert!(!same_one_time_key(r#""k""#, r#""l""#));
    }

    #[test]
    fn merging_signatures_keeps_both() {
        let stored = json!({"keys": {"a": "b"}, "signatures": {"@u:x": {"ed25519:D": "s"}}});
        let extra = json!({"keys": {"a": "b"}, "signatures": {"@u:x": {"ed25519:M": "t"}}});
        let merged = merge_signatures(&stored, &extra);
        assert_eq!(
            merged["signatures"]["@u:x"],
            json!({"ed25519:D": "s", "ed25519:M": "t"})
        );
        assert_eq!(identity_of(&merged), identity_of(&stored));
    }
}

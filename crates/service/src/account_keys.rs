//! Account keys (MSC4243): each local user's one ed25519 account key (created at registration,
//! lazily for users that predate account keys, immutable, the private half sealed at rest like
//! the server key and never exported or logged), the translation between account-name and
//! key-form user ids for Client-Server input (Q3, Q4), the lookup of key states the client
//! projection reads, serving `/query/accounts` (per-key signed answers, `M_UNKNOWN`, signed
//! `M_ERASED`, the erasure cursor of Q11) and erasure.
//!
//! The lookup is synchronous (the projection is a pure function called per event), so the
//! states of every local, verified and erased key are held in memory, loaded at start and
//! written through on every change this service makes. Unverified is the default: a key this
//! map does not know is never shown by name.

use std::collections::HashMap;
use std::sync::RwLock;

use myelin_room_version::{
    AccountKey, CanonicalJsonObject, CanonicalJsonValue, KeyFormUserId, KeyPair, KeyVerification,
    account_key::looks_like_account_key,
    canonical::to_canonical_string,
    query_accounts::{signed_account_answer, signed_erasure},
};
use myelin_store::{AccountKeyRow, KeyState, NewLocalAccountKey, Store};
use ruma::OwnedServerName;
use serde_json::{Map, Value, json};

use crate::{Error, Result, now_millis, secrets::Sealer};

/// At most this many keys per `/query/accounts` request (MSC4243.md §2.3 item 25).
pub const MAX_QUERY_KEYS: usize = 2048;
/// `erasure.limit` is capped here whatever the request asks (Q11).
pub const MAX_ERASURE_LIMIT: i64 = 2048;

/// Local users' account keys and what this server knows of everyone's.
pub struct AccountKeys {
    store: Store,
    sealer: Sealer,
    server_name: OwnedServerName,
    /// `experimental.msc4243`: whether account-key rooms may be created and are advertised.
    enabled: bool,
    /// Key-form user id → state, for every key that is not Unverified.
    states: RwLock<HashMap<String, KeyVerification>>,
    /// Local account name → key-form user id (the keys are immutable, so never stale).
    local: RwLock<HashMap<String, String>>,
    /// One erasure at a time, so the erasure log's positions are handed out in order.
    erasing: tokio::sync::Mutex<()>,
    /// Woken when a remote key's state changes: what clients see of its events changes, and
    /// a late verification may have state to deliver again.
    notifier: crate::notifier::Notifier,
}

impl std::fmt::Debug for AccountKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKeys")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// A `/query/accounts` request (MSC4243.md §2.3 item 16).
#[derive(Debug, Clone, Default)]
pub struct QueryAccounts {
    pub account_keys: Vec<String>,
    /// `erasure: {id, limit}`.
    pub erasure: Option<(i64, i64)>,
}

/// The outcome recorded for a valid answer about a key this server already holds as verified
/// (or local) under another domain: the claim stays unverified, retried like a disowned key.
pub const VERIFIED_ELSEWHERE: &str = "verified_elsewhere";

fn verification_of(row: &AccountKeyRow) -> Option<KeyVerification> {
    match (row.state, &row.account_name) {
        (KeyState::Local, Some(name)) => Some(KeyVerification::Local {
            account_name: name.clone(),
        }),
        (KeyState::Verified, Some(name)) => Some(KeyVerification::Verified {
            account_name: name.clone(),
        }),
        (KeyState::Erased, _) => Some(KeyVerification::Erased),
        _ => None,
    }
}

impl AccountKeys {
    /// Loads the known key states. `enabled` is `experimental.msc4243`.
    pub async fn load(
        store: Store,
        sealer: Sealer,
        server_name: OwnedServerName,
        enabled: bool,
        notifier: crate::notifier::Notifier,
    ) -> std::result::Result<Self, myelin_store::StoreError> {
        let rows = store.known_account_keys().await?;
        let mut states = HashMap::new();
        let mut local = HashMap::new();
        for row in &rows {
            if let Some(state) = verification_of(row) {
                states.insert(row.user_id.clone(), state);
            }
            if row.state == KeyState::Local
                && row.domain == server_name.as_str()
                && let Some(name) = &row.account_name
            {
                local.insert(name.clone(), row.user_id.clone());
            }
        }
        Ok(Self {
            store,
            sealer,
            server_name,
            enabled,
            states: RwLock::new(states),
            local: RwLock::new(local),
            erasing: tokio::sync::Mutex::new(()),
            notifier,
        })
    }

    /// Whether account-key rooms may be created here (`experimental.msc4243`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// What this server knows of a key-form user id's claim (the projection's lookup).
    pub fn lookup(&self, user: &KeyFormUserId) -> KeyVerification {
        let states = self.states.read().unwrap_or_else(|p| p.into_inner());
        states
            .get(&user.to_string())
            .cloned()
            .unwrap_or(KeyVerification::Unverified)
    }

    /// The key-form user id of the local account `localpart` if it has a key (no store read:
    /// every local key is in memory from start or creation).
    pub fn known_local_user_id(&self, localpart: &str) -> Option<String> {
        self.local
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(localpart)
            .cloned()
    }

    /// The key-form user id of the local account `localpart`, creating its key if it has none
    /// (registration, and users that predate account keys). The caller has checked that the
    /// account exists and is active.
    pub async fn local_user_id(&self, localpart: &str) -> Result<String> {
        if let Some(id) = self
            .local
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(localpart)
        {
            return Ok(id.clone());
        }
        let row = match self
            .store
            .local_account_key(localpart, self.server_name.as_str())
            .await?
        {
            Some(row) => row,
            None => {
                // Only an active account gets a key: a deactivated one (its key erased, or
                // never made) must not come back under a fresh key.
                match self.store.user_by_localpart(localpart).await? {
                    Some(user) if user.deactivated_ts.is_none() => {}
                    _ => {
                        return Err(Error::Forbidden(format!(
                            "{localpart} is not an active account and gets no account key"
                        )));
                    }
                }
                let seed: [u8; 32] = rand::random();
                let pair = KeyPair::from_seed(&seed);
                // A generated key is a valid, canonical, full-order point; checked anyway, as
                // a key that failed the grammar would make the user unable to send.
                let key = AccountKey::from_bytes(pair.public_key())
                    .map_err(|e| Error::Internal(format!("generated account key: {e}")))?;
                let row = self
                    .store
                    .insert_local_account_key(&NewLocalAccountKey {
                        account_key: key.as_str(),
                        domain: self.server_name.as_str(),
                        account_name: localpart,
                        private_key_enc: &self.sealer.seal(&seed),
                        now: now_millis(),
                    })
                    .await?;
                if row.account_key == key.as_str() {
                    tracing::info!(user = %localpart, "created an account key");
                }
                row
            }
        };
        self.remember(&row);
        Ok(row.user_id)
    }

    fn remember(&self, row: &AccountKeyRow) {
        if let Some(state) = verification_of(row) {
            self.states
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(row.user_id.clone(), state);
        }
        if row.state == KeyState::Local
            && let Some(name) = &row.account_name
        {
            self.local
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone(), row.user_id.clone());
        }
    }

    /// The signing key of the local account `localpart` (opened from its sealed form for this
    /// one use; never kept, exported or logged).
    pub async fn signing_key(&self, localpart: &str) -> Result<KeyPair> {
        self.local_user_id(localpart).await?;
        let row = self
            .store
            .local_account_key(localpart, self.server_name.as_str())
            .await?
            .ok_or_else(|| Error::Forbidden(format!("{localpart} has no account key")))?;
        self.open_pair(&row)
    }

    /// The key pair of a local key's row, its private half unsealed and checked against the
    /// public key.
    fn open_pair(&self, row: &AccountKeyRow) -> Result<KeyPair> {
        let name = row.account_name.as_deref().unwrap_or_default();
        let sealed = row
            .private_key_enc
            .as_deref()
            .ok_or_else(|| Error::Forbidden(format!("{name}'s account key is erased")))?;
        let seed: [u8; 32] = self
            .sealer
            .open(sealed)
            .map_err(|e| Error::Internal(format!("opening an account key: {e}")))?
            .try_into()
            .map_err(|_| Error::Internal("a sealed account key is not a 32-byte seed".into()))?;
        let pair = KeyPair::from_seed(&seed);
        if pair.account_key().as_str() != row.account_key {
            return Err(Error::Internal(
                "a sealed account key does not match its public key".to_owned(),
            ));
        }
        Ok(pair)
    }

    /// A user id a client named, in key form for an account-key room (MSC4243.md Q3, Q4): a
    /// key-form id this server knows (any state: a key names its principal exactly, so a
    /// moderator may ban or empower a key held unverified) as is; a local account's name as its
    /// key (created if the account predates keys); anything else, `M_INVALID_PARAM`: we never
    /// guess a key, and a key this server has never met is refused as a likely mistake.
    pub async fn to_key_form(&self, user_id: &str) -> Result<String> {
        let unknown = || {
            Error::InvalidParam(format!(
                "{user_id}: account key unknown (this room version names users by account key)"
            ))
        };
        let (localpart, domain) = user_id
            .strip_prefix('@')
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(|| Error::InvalidParam(format!("{user_id} is not a user id")))?;
        if let Ok(parsed) = KeyFormUserId::parse(user_id) {
            let key_form = parsed.to_string();
            return match self.lookup(&parsed) {
                KeyVerification::Unverified
                    if self
                        .store
                        .account_keys_by_user_ids(std::slice::from_ref(&key_form))
                        .await?
                        .is_empty() =>
                {
                    Err(unknown())
                }
                _ => Ok(key_form),
            };
        }
        if domain != self.server_name.as_str() || looks_like_account_key(localpart) {
            return Err(unknown());
        }
        match self.store.user_by_localpart(localpart).await? {
            Some(user) if user.deactivated_ts.is_none() => self.local_user_id(localpart).await,
            _ => Err(unknown()),
        }
    }

    /// [`Self::to_key_form`], and for another server's account named by name, its key when
    /// exactly one key is verified under that name (MSC4243.md Q8: keys "known from earlier
    /// shared rooms", for creators and room upgrades). Several keys under one name are refused:
    /// which one the client meant would be a guess.
    pub async fn known_key_form(&self, user_id: &str) -> Result<String> {
        let err = match self.to_key_form(user_id).await {
            Ok(key_form) => return Ok(key_form),
            Err(err @ Error::InvalidParam(_)) => err,
            Err(other) => return Err(other),
        };
        if KeyFormUserId::parse(user_id).is_ok() {
            return Err(err);
        }
        let mut keys = self.store.verified_key_forms_of(user_id).await?;
        match keys.len() {
            1 => Ok(keys.remove(0)),
            0 => Err(err),
            n => Err(Error::InvalidParam(format!(
                "{user_id}: {n} account keys are verified under this name; name the key"
            ))),
        }
    }

    /// Serves `/query/accounts` for this server (MSC4243.md §2.3 items 16–17, 25, 27–28, Q11):
    /// each requested key this server holds for a local account gets its signed answer, an
    /// erased one its stored signed `M_ERASED`, any other `M_UNKNOWN`; with `erasure`, the
    /// erasure log after `erasure.id` up to the capped limit.
    pub async fn query_accounts(&self, request: &QueryAccounts) -> Result<Value> {
        if request.account_keys.len() > MAX_QUERY_KEYS {
            return Err(Error::InvalidParam(format!(
                "at most {MAX_QUERY_KEYS} account_keys per request"
            )));
        }
        let domain = self.server_name.as_str();
        let user_ids: Vec<String> = request
            .account_keys
            .iter()
            .map(|key| format!("@{key}:{domain}"))
            .collect();
        let rows = self.store.account_keys_by_user_ids(&user_ids).await?;
        let by_key: HashMap<&str, &AccountKeyRow> = rows
            .iter()
            .filter(|row| row.domain == domain)
            .map(|row| (row.account_key.as_str(), row))
            .collect();
        let mut answers = Map::new();
        for key in &request.account_keys {
            let answer = match by_key.get(key.as_str()) {
                Some(row) => self.answer_for(row)?,
                None => None,
            };
            answers.insert(
                key.clone(),
                answer.unwrap_or_else(|| json!({"errcode": "M_UNKNOWN"})),
            );
        }
        let mut response = Map::new();
        if let Some((after, limit)) = request.erasure {
            let limit = limit.clamp(0, MAX_ERASURE_LIMIT);
            // One more than asked tells whether there is more.
            let mut erased = self
                .store
                .erasures_after(domain, after.max(0), limit + 1)
                .await?;
            let has_more = erased.len() as i64 > limit;
            erased.truncate(limit as usize);
            // Q11: the position of the last entry returned, or the latest if none was. With
            // entries left but none returned (`limit: 0`), the latest would let the poller skip
            // them, so the cursor stays where it was.
            let id = match erased.last() {
                Some(last) => last.erasure_id.unwrap_or(after),
                None if has_more => after,
                None => self.store.latest_erasure_id(domain).await?.max(after),
            };
            for row in &erased {
                if let Some(attestation) = attestation_of(row) {
                    answers.insert(row.account_key.clone(), attestation);
                }
            }
            response.insert(
                "erasure".to_owned(),
                json!({"id": id, "has_more": has_more}),
            );
        }
        response.insert("account_keys".to_owned(), Value::Object(answers));
        Ok(Value::Object(response))
    }

    fn answer_for(&self, row: &AccountKeyRow) -> Result<Option<Value>> {
        Ok(match row.state {
            // The row read for the answer holds the sealed key: no second read per key.
            KeyState::Local => match &row.account_name {
                Some(name) => {
                    let pair = self.open_pair(row)?;
                    Some(to_value(signed_account_answer(
                        &pair,
                        name,
                        self.server_name.as_str(),
                    )))
                }
                None => None,
            },
            KeyState::Erased => attestation_of(row),
            // Remote keys are not ours to vouch for.
            KeyState::Verified | KeyState::Unverified => None,
        })
    }

    /// Records what a `/query/accounts` answer said about a remote key-form user (judged by
    /// the room version's classifier), under the store's allowed transitions, and makes the
    /// resulting state what every client view reads from now on. Returns that state.
    pub async fn record_remote(
        &self,
        user: &KeyFormUserId,
        verdict: &myelin_store::RemoteKeyVerdict<'_>,
    ) -> Result<KeyVerification> {
        let mut states = self
            .record_remote_many(&user.server_name, &[(user, verdict.clone())])
            .await?;
        Ok(states.pop().unwrap_or(KeyVerification::Unverified))
    }

    /// [`Self::record_remote`] for the verdicts of one answer, all about users claiming
    /// `domain`: written in one store transaction and read back in one query, so that a batch
    /// of 2048 keys costs one commit rather than 2048. Returns each user's state, in order.
    pub async fn record_remote_many(
        &self,
        domain: &str,
        verdicts: &[(&KeyFormUserId, myelin_store::RemoteKeyVerdict<'_>)],
    ) -> Result<Vec<KeyVerification>> {
        if domain == self.server_name.as_str() {
            return Err(Error::Internal(
                "this server's own keys are not verified by asking".to_owned(),
            ));
        }
        if let Some((user, _)) = verdicts.iter().find(|(user, _)| user.server_name != domain) {
            return Err(Error::Internal(format!(
                "{user} is not of {domain}, whose answer is being recorded"
            )));
        }
        let keys: Vec<(&str, myelin_store::RemoteKeyVerdict<'_>)> = verdicts
            .iter()
            .map(|(user, verdict)| (user.key.as_str(), verdict.clone()))
            .collect();
        let now = now_millis();
        let recorded = self
            .store
            .record_remote_account_keys(domain, &keys, now)
            .await?;
        // A valid answer for a key already verified (or local) under another domain verifies
        // nothing (first verification wins, MSC4243.md Q1), and the store leaves the claim as it
        // was: recorded here as a disowned answer is, with its retry time, so that it is not
        // asked about again with every event that names it.
        let refused: Vec<(&str, myelin_store::RemoteKeyVerdict<'_>)> = keys
            .iter()
            .zip(&recorded)
            .filter(|((_, verdict), state)| {
                matches!(verdict, myelin_store::RemoteKeyVerdict::Verified { .. })
                    && **state == myelin_store::KeyState::Unverified
            })
            .map(|((key, _), _)| {
                (
                    *key,
                    myelin_store::RemoteKeyVerdict::Unverified {
                        outcome: VERIFIED_ELSEWHERE,
                        next_attempt_ts: now + crate::account_verification::RETRY_DISOWNED_MS,
                    },
                )
            })
            .collect();
        if !refused.is_empty() {
            tracing::warn!(
                %domain,
                keys = refused.len(),
                "an answer vouches for keys verified for another domain; they stay unverified here"
            );
            self.store
                .record_remote_account_keys(domain, &refused, now)
                .await?;
        }
        let ids: Vec<String> = verdicts.iter().map(|(user, _)| user.to_string()).collect();
        let rows = self.store.account_keys_by_user_ids(&ids).await?;
        let by_id: HashMap<&str, &AccountKeyRow> =
            rows.iter().map(|row| (row.user_id.as_str(), row)).collect();
        let mut changed = false;
        let states: Vec<KeyVerification> = {
            let mut states = self.states.write().unwrap_or_else(|p| p.into_inner());
            ids.into_iter()
                .map(|id| {
                    let state = by_id
                        .get(id.as_str())
                        .and_then(|row| verification_of(row))
                        .unwrap_or(KeyVerification::Unverified);
                    let before = match &state {
                        KeyVerification::Unverified => states.remove(&id),
                        known => states.insert(id, known.clone()),
                    };
                    changed |=
                        before.as_ref() != Some(&state) && state != KeyVerification::Unverified;
                    state
                })
                .collect()
        };
        // What clients see of these keys' events changed, and a late verification may have
        // state to deliver again: syncs look again.
        if changed {
            self.notifier.notify();
        }
        Ok(states)
    }

    /// Erases the local account `localpart`'s key (`/account/deactivate` with `erase: true`):
    /// the signed `M_ERASED` is made while the private key still exists, then the private key
    /// and the name are destroyed and the key enters the erasure log, in one write. Returns
    /// whether there was a key to erase.
    pub async fn erase(&self, localpart: &str) -> Result<bool> {
        let _one_at_a_time = self.erasing.lock().await;
        let Some(row) = self
            .store
            .local_account_key(localpart, self.server_name.as_str())
            .await?
        else {
            return Ok(false);
        };
        let pair = self.signing_key(localpart).await?;
        let attestation = to_canonical_string(&signed_erasure(&pair, self.server_name.as_str()));
        drop(pair);
        let position = self
            .store
            .erase_local_account_key(
                localpart,
                self.server_name.as_str(),
                &attestation,
                now_millis(),
            )
            .await?;
        self.local
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(localpart);
        self.states
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(row.user_id.clone(), KeyVerification::Erased);
        tracing::info!(user = %localpart, position = ?position, "erased an account key");
        Ok(position.is_some())
    }
}

fn attestation_of(row: &AccountKeyRow) -> Option<Value> {
    row.erasure_attestation
        .as_deref()
        .and_then(|json| serde_json::from_str(json).ok())
}

fn to_value(object: CanonicalJsonObject) -> Value {
    serde_json::to_value(CanonicalJsonValue::Object(object)).expect("canonical JSON is JSON")
}

//! Other servers' signing keys: fetched from the server (`/_matrix/key/v2/server`) or, failing
//! that, through the configured notaries (`/_matrix/key/v2/query`), checked, cached in the store,
//! relayed when other servers use this one as a notary, and used to check the X-Matrix
//! signature of inbound federation requests.
//!
//! Every request goes through [`crate::federation::Outbound`]: a server that is backing off
//! gets none (the notaries are still asked). An inbound request whose signature verifies marks
//! its origin alive there.
//!
//! Caching: a key is used from the store until the earlier of its `valid_until_ts` and seven
//! days after it was fetched (old keys: seven days), then fetched again. One fetch per server
//! runs at a time: concurrent callers wait for it and read its result from the store; a failed
//! fetch, or a key id the server did not publish, is not asked for again within
//! [`FAILURE_BACKOFF`], so a server that is down, or requests naming made-up keys, cost one
//! request however many events or requests name them.
//!
//! Validity: [`RemoteKeys::keys_for`] returns each key with its `valid_until_ts` (an old key's
//! `expired_ts`); checking it against an event's `origin_server_ts` (room versions 5 and later)
//! is the caller's, as `myelin_room_version::verify` does.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use myelin_federation::{
    FederationError,
    keys::{PublishedKey, VerifiedKeyObject, verify_key_object, verify_notary_signature},
    xmatrix,
};
use myelin_room_version::{
    CanonicalJsonObject, CanonicalJsonValue, PublicKey,
    verify::{ServerKey, ServerKeys as KeyMap},
};
use myelin_store::{RemoteServerKey, Store};
use ruma::{
    OwnedServerName, OwnedServerSigningKeyId, ServerName,
    api::federation::{
        authentication::XMatrix,
        discovery::{get_remote_server_keys_batch, get_server_keys},
    },
    serde::Raw,
};

use crate::{Error, Result, now_millis, server_keys::ServerKeys};

/// The longest a fetched key is used before it is fetched again.
pub const MAX_CACHE_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// How long a server whose keys could not be fetched is left alone.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(60);

/// The remote keys area.
pub struct RemoteKeys {
    store: Store,
    /// Requests go through the per-destination backoff (a server that is down costs no request
    /// until its backoff runs out); inbound requests that verify revive their origin there.
    client: Arc<crate::federation::Outbound>,
    own: Arc<ServerKeys>,
    server_name: OwnedServerName,
    notaries: Vec<OwnedServerName>,
    /// One lock per server being fetched (single flight).
    fetching: Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>>,
    /// When a fetch for a server failed (key id `""`), or answered without a key id asked for.
    tried: Mutex<HashMap<(OwnedServerName, String), Instant>>,
    /// Key requests sent to other servers (direct and notary; not those the backoff held
    /// back), for tests and metrics.
    requests: AtomicU64,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("notaries", &self.notaries)
            .finish_non_exhaustive()
    }
}

/// Whether a cached key may be used now for signatures that need it valid until `min_valid`.
fn fresh(key: &RemoteServerKey, now: i64, min_valid: i64) -> bool {
    key.cache_until_ts > now && (key.is_old || key.valid_until_ts >= min_valid)
}

fn to_rows(object: &VerifiedKeyObject, now: i64) -> Result<Vec<RemoteServerKey>> {
    let json = serde_json::to_string(&object.object)
        .map_err(|e| Error::Internal(format!("serialising a key object: {e}")))?;
    Ok(object
        .keys
        .iter()
        .map(|key| RemoteServerKey {
            server_name: object.server_name.clone(),
            key_id: key.key_id.clone(),
            public_key: key.public_key.to_vec(),
            valid_until_ts: key.valid_until_ts,
            is_old: key.old,
            cache_until_ts: if key.old {
                now + MAX_CACHE_MS
            } else {
                key.valid_until_ts.min(now + MAX_CACHE_MS)
            },
            fetched_ts: now,
            key_object: json.clone(),
        })
        .collect())
}

impl RemoteKeys {
    pub fn new(
        store: Store,
        client: Arc<crate::federation::Outbound>,
        own: Arc<ServerKeys>,
        server_name: OwnedServerName,
        notaries: Vec<OwnedServerName>,
    ) -> Self {
        RemoteKeys {
            store,
            client,
            own,
            server_name,
            notaries,
            fetching: Mutex::new(HashMap::new()),
            tried: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
        }
    }

    /// How many key requests this server has sent to others.
    pub fn requests_sent(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The keys `key_ids` of `server` (every key known, if `key_ids` is empty), fetching them
    /// when the cache lacks them, holds them past their cache lifetime, or (for current keys)
    /// holds them valid until before `min_valid_until_ts`. Keys that cannot be had are missing
    /// from the answer; a stale cached key is returned when a refetch fails.
    pub async fn keys_for(
        &self,
        server: &ServerName,
        key_ids: &[String],
        min_valid_until_ts: i64,
    ) -> Result<BTreeMap<String, ServerKey>> {
        if server == self.server_name {
            return Ok(self.own_keys(key_ids));
        }
        let rows = self
            .cached_or_fetched(server, key_ids, min_valid_until_ts)
            .await?;
        let mut keys = BTreeMap::new();
        for row in rows {
            if !key_ids.is_empty() && !key_ids.contains(&row.key_id) {
                continue;
            }
            let Ok(bytes) = <[u8; 32]>::try_from(row.public_key.as_slice()) else {
                continue;
            };
            let Ok(key) = PublicKey::from_bytes(&bytes) else {
                continue;
            };
            keys.insert(
                row.key_id,
                ServerKey {
                    key,
                    valid_until_ts: u64::try_from(row.valid_until_ts).unwrap_or(0),
                },
            );
        }
        Ok(keys)
    }

    /// [`Self::keys_for`] for several servers at once, in the shape the room-version crate's
    /// signature checks take.
    pub async fn key_map(
        &self,
        wanted: &BTreeMap<OwnedServerName, Vec<String>>,
        min_valid_until_ts: i64,
    ) -> Result<KeyMap> {
        let mut map = KeyMap::new();
        for (server, key_ids) in wanted {
            let keys = self.keys_for(server, key_ids, min_valid_until_ts).await?;
            map.insert(server.to_string(), keys);
        }
        Ok(map)
    }

    fn own_keys(&self, key_ids: &[String]) -> BTreeMap<String, ServerKey> {
        self.own
            .published_keys()
            .into_iter()
            .filter(|(key_id, _, _)| key_ids.is_empty() || key_ids.contains(key_id))
            .filter_map(|(key_id, public, valid_until_ts)| {
                Some((
                    key_id,
                    ServerKey {
                        key: PublicKey::from_bytes(&public).ok()?,
                        valid_until_ts: u64::try_from(valid_until_ts).unwrap_or(0),
                    },
                ))
            })
            .collect()
    }

    /// The cached rows of `server`, after a fetch if the wanted keys are not all fresh.
    async fn cached_or_fetched(
        &self,
        server: &ServerName,
        key_ids: &[String],
        min_valid: i64,
    ) -> Result<Vec<RemoteServerKey>> {
        let satisfied = |rows: &[RemoteServerKey]| {
            let now = now_millis();
            if key_ids.is_empty() {
                rows.iter().any(|r| !r.is_old && fresh(r, now, min_valid))
            } else {
                key_ids.iter().all(|id| {
                    rows.iter()
                        .any(|r| &r.key_id == id && fresh(r, now, min_valid))
                })
            }
        };
        let rows = self.store.remote_server_keys(server.as_str()).await?;
        if satisfied(&rows) {
            return Ok(rows);
        }
        let lock = self
            .fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(server.to_owned())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        // Whoever held the lock may have fetched what is wanted.
        let rows = self.store.remote_server_keys(server.as_str()).await?;
        if satisfied(&rows) {
            return Ok(rows);
        }
        // A server that just failed, or that just answered without the keys asked for, is
        // not asked again for a while: an inbound request naming a made-up key must not make
        // this server fetch keys once per request.
        let now = now_millis();
        let unsatisfied: Vec<&String> = key_ids
            .iter()
            .filter(|id| {
                !rows
                    .iter()
                    .any(|r| &r.key_id == *id && fresh(r, now, min_valid))
            })
            .collect();
        let held_back = {
            let tried = self.tried.lock().unwrap_or_else(|e| e.into_inner());
            let recent = |key: &str| {
                tried
                    .get(&(server.to_owned(), key.to_owned()))
                    .is_some_and(|at| at.elapsed() < FAILURE_BACKOFF)
            };
            recent("") || (!unsatisfied.is_empty() && unsatisfied.iter().all(|id| recent(id)))
        };
        if held_back {
            return Ok(rows);
        }
        let fetched = self.fetch(server, key_ids, min_valid).await;
        let rows_after = self.store.remote_server_keys(server.as_str()).await?;
        {
            let mut tried = self.tried.lock().unwrap_or_else(|e| e.into_inner());
            tried.retain(|_, at| at.elapsed() < FAILURE_BACKOFF);
            if fetched {
                tried.remove(&(server.to_owned(), String::new()));
            } else {
                tried.insert((server.to_owned(), String::new()), Instant::now());
            }
            for id in key_ids {
                if !rows_after.iter().any(|r| &r.key_id == id) {
                    tried.insert((server.to_owned(), id.clone()), Instant::now());
                }
            }
        }
        self.fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, lock| Arc::strong_count(lock) > 1);
        Ok(rows_after)
    }

    /// Fetches from the server, then from the notaries if it did not give the wanted keys.
    /// Stores what checks out; whether anything did.
    async fn fetch(&self, server: &ServerName, key_ids: &[String], min_valid: i64) -> bool {
        let now = now_millis();
        let direct = self.fetch_direct(server).await;
        let mut stored = false;
        if let Some(object) = &direct {
            stored = self.store_object(object, now).await;
            let has_all = key_ids
                .iter()
                .all(|id| object.keys.iter().any(|k| &k.key_id == id));
            if stored && has_all && object.valid_until_ts >= min_valid {
                return true;
            }
        }
        for notary in &self.notaries {
            if notary.as_str() == server.as_str() {
                continue;
            }
            for object in self
                .fetch_from_notary(notary, server, key_ids, min_valid)
                .await
            {
                stored |= self.store_object(&object, now).await;
            }
            if stored {
                break;
            }
        }
        stored
    }

    async fn store_object(&self, object: &VerifiedKeyObject, now: i64) -> bool {
        match to_rows(object, now) {
            Ok(rows) => match self.store.store_remote_server_keys(&rows).await {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(server = %object.server_name, %err, "could not cache server keys");
                    false
                }
            },
            Err(_) => false,
        }
    }

    /// Counts a request that went out (one refused by the backoff did not).
    fn counted<T>(
        &self,
        result: std::result::Result<T, FederationError>,
    ) -> std::result::Result<T, FederationError> {
        if !matches!(result, Err(FederationError::NotRetrying { .. })) {
            self.requests.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn fetch_direct(&self, server: &ServerName) -> Option<VerifiedKeyObject> {
        let response = match self.counted(
            self.client
                .send(server, get_server_keys::v2::Request::new())
                .await,
        ) {
            Ok(response) => response,
            Err(err) => {
                tracing::info!(%server, %err, "could not fetch server keys");
                return None;
            }
        };
        let value = response
            .server_key
            .deserialize_as_unchecked::<serde_json::Value>()
            .ok()?;
        match verify_key_object(value, server.as_str()) {
            Ok(object) => Some(object),
            Err(err) => {
                tracing::info!(%server, %err, "refused the server's key object");
                None
            }
        }
    }

    /// A notary's own current keys: cached, or fetched from it directly. Taken outside the
    /// per-server fetch locks (the caller holds the lock of the server it asks about; two
    /// notaries each fetching the other's keys must not wait on each other), and never through
    /// another notary.
    async fn notary_keys(&self, notary: &ServerName) -> Vec<PublishedKey> {
        let now = now_millis();
        let mut rows = self
            .store
            .remote_server_keys(notary.as_str())
            .await
            .unwrap_or_default();
        if !rows.iter().any(|r| !r.is_old && fresh(r, now, now)) {
            if let Some(object) = self.fetch_direct(notary).await {
                self.store_object(&object, now).await;
            }
            rows = self
                .store
                .remote_server_keys(notary.as_str())
                .await
                .unwrap_or_default();
        }
        rows.into_iter()
            .filter(|r| !r.is_old && fresh(r, now, now))
            .filter_map(|r| {
                Some(PublishedKey {
                    public_key: <[u8; 32]>::try_from(r.public_key.as_slice()).ok()?,
                    key_id: r.key_id,
                    valid_until_ts: r.valid_until_ts,
                    old: false,
                })
            })
            .collect()
    }

    /// The key objects of `server` that `notary` relays and has signed.
    async fn fetch_from_notary(
        &self,
        notary: &ServerName,
        server: &ServerName,
        key_ids: &[String],
        min_valid: i64,
    ) -> Vec<VerifiedKeyObject> {
        let notary_keys = self.notary_keys(notary).await;
        if notary_keys.is_empty() {
            return Vec::new();
        }
        let mut criteria = get_remote_server_keys_batch::v2::QueryCriteria::default();
        criteria.minimum_valid_until_ts = u64::try_from(min_valid)
            .ok()
            .and_then(ruma::UInt::new)
            .map(ruma::MilliSecondsSinceUnixEpoch);
        let mut wanted: BTreeMap<OwnedServerSigningKeyId, _> = BTreeMap::new();
        for id in key_ids {
            if let Ok(id) = OwnedServerSigningKeyId::try_from(id.as_str()) {
                wanted.insert(id, criteria.clone());
            }
        }
        let mut query = BTreeMap::new();
        query.insert(server.to_owned(), wanted);
        let response = match self.counted(
            self.client
                .send(
                    notary,
                    get_remote_server_keys_batch::v2::Request::new(query),
                )
                .await,
        ) {
            Ok(response) => response,
            Err(err) => {
                tracing::info!(%notary, %server, %err, "notary did not answer for server keys");
                return Vec::new();
            }
        };
        response
            .server_keys
            .iter()
            .filter_map(|raw| {
                let value = raw.deserialize_as_unchecked::<serde_json::Value>().ok()?;
                let object = verify_key_object(value, server.as_str()).ok()?;
                verify_notary_signature(&object.object, notary.as_str(), &notary_keys).ok()?;
                Some(object)
            })
            .collect()
    }

    /// Serving as a notary: the key objects of `server` (ours, or as cached after a refetch
    /// when the cache does not satisfy `min_valid_until_ts`), each signed by this server too.
    /// A server whose keys cannot be had gives an empty list.
    pub async fn notarised(
        &self,
        server: &ServerName,
        key_ids: &[String],
        min_valid_until_ts: Option<i64>,
    ) -> Result<Vec<Raw<serde_json::Value>>> {
        if server == self.server_name {
            return Ok(vec![self.own.server_key_object().cast_unchecked()]);
        }
        let min_valid = min_valid_until_ts.unwrap_or_else(now_millis);
        let rows = self.cached_or_fetched(server, key_ids, min_valid).await?;
        let mut objects: Vec<&str> = rows
            .iter()
            .filter(|r| key_ids.is_empty() || key_ids.contains(&r.key_id))
            .map(|r| r.key_object.as_str())
            .collect();
        objects.sort_unstable();
        objects.dedup();
        let mut out = Vec::new();
        for text in objects {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
                continue;
            };
            let Ok(CanonicalJsonValue::Object(mut object)) = CanonicalJsonValue::try_from(value)
            else {
                continue;
            };
            self.own.sign_json(&mut object);
            out.push(
                Raw::new(&object)
                    .map_err(|e| Error::Internal(e.to_string()))?
                    .cast_unchecked(),
            );
        }
        Ok(out)
    }

    /// Checks an inbound request's X-Matrix `Authorization` header: destination (when given)
    /// is this server, the origin's key is known and valid now, and the signature covers this
    /// method, URI, origin, destination and body. Returns the origin.
    pub async fn authenticate_request(
        &self,
        authorization: Option<&str>,
        method: &str,
        uri: &str,
        body: &[u8],
    ) -> Result<OwnedServerName> {
        let unauthorized = |why: String| Error::Unauthorized(why);
        let header = authorization
            .ok_or_else(|| unauthorized("Missing X-Matrix Authorization header".to_owned()))?;
        let header = XMatrix::parse(header)
            .map_err(|e| unauthorized(format!("Bad X-Matrix Authorization header: {e}")))?;
        if let Some(destination) = &header.destination
            && destination != &self.server_name
        {
            return Err(unauthorized(format!(
                "The request is for {destination}, not this server"
            )));
        }
        if header.origin == self.server_name {
            return Err(unauthorized(
                "The request claims to come from this server".to_owned(),
            ));
        }
        let object: CanonicalJsonObject = xmatrix::request_object(
            method,
            uri,
            header.origin.as_str(),
            self.server_name.as_str(),
            body,
        )
        .map_err(|e| Error::NotJson(e.to_string()))?;
        let key_id = header.key.to_string();
        let now = now_millis();
        let keys = self
            .keys_for(&header.origin, std::slice::from_ref(&key_id), now)
            .await?;
        let key = keys
            .get(&key_id)
            .filter(|key| i64::try_from(key.valid_until_ts).unwrap_or(i64::MAX) >= now)
            .ok_or_else(|| {
                unauthorized(format!(
                    "No valid key {key_id} of {} is known",
                    header.origin
                ))
            })?;
        xmatrix::verify(&object, &header, &key.key)
            .map_err(|e| unauthorized(format!("X-Matrix signature does not verify: {e}")))?;
        // A server that talks to us is up: whatever waits for it goes now.
        self.client.backoff().mark_alive(&header.origin).await;
        Ok(header.origin)
    }
}

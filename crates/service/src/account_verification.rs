//! Asking other servers who their account keys are (MSC4243.md §2.3 items 20–24): the
//! requester's half of `/query/accounts`. Key-form users this server does not know yet are
//! grouped by the domain they claim, asked in batches of at most [`MAX_QUERY_KEYS`], each
//! request bounded in time and in answer size and sent through [`Outbound`] (so the
//! per-domain backoff of the transport applies: a forged-domain flood costs that domain one
//! batch per key batch and backoff window). Each per-key answer is judged by the room
//! version's classifier (`query_accounts::classify_answer`, the one judgement) and recorded
//! through [`AccountKeys::record_remote`], the one way a verdict enters the store and the
//! client projection.
//!
//! Retries (item 24): a key whose domain did not answer, or answered without it, is asked again
//! after [`RETRY_UNANSWERED_MS`]; one the domain disowned (`M_UNKNOWN` or another errcode, a
//! bad answer) after [`RETRY_DISOWNED_MS`], so domains that never answered come first. A key is
//! asked again when its room brings news of it, and by a background round
//! ([`AccountVerifier::run_retries`]) while it is still a member of a room here.
//!
//! Erasure (§2.4): the same rounds read, once a day, the erasure log of each server that
//! vouches for a key verified here ([`AccountVerifier::poll_erasures`]), and record the
//! validly signed erasures of keys this server knows.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use myelin_room_version::{
    account_key::KeyFormUserId,
    canonical::to_canonical_string,
    projection::KeyVerification,
    query_accounts::{AnswerVerdict, Unverified, classify_answer},
};
use myelin_store::{RemoteKeyVerdict, Store};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, ServerName};
use serde_json::Value;

use crate::{
    Result,
    account_keys::{AccountKeys, MAX_QUERY_KEYS},
    federation::{Outbound, msc4243::query_accounts},
    now_millis,
};

/// The largest answer read: 2048 signed per-key objects are about 1 MB (item 22); more is a
/// malicious answer and dropped (item 29).
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// How long one `/query/accounts` request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// When a key whose domain did not answer (or left it out) is asked again.
pub const RETRY_UNANSWERED_MS: i64 = 5 * 60 * 1000;
/// When a key its domain disowned (an errcode, a malformed or badly signed answer) is asked again.
pub const RETRY_DISOWNED_MS: i64 = 60 * 60 * 1000;
/// How often due retries are looked for.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(60);
/// Keys asked about again per round at most.
pub const RETRY_BATCH: i64 = 4 * MAX_QUERY_KEYS as i64;
/// How long a claimed retry is held before another round (or process) may claim it again, in
/// case the asking never records its outcome.
pub const RETRY_LEASE_MS: i64 = 10 * 60 * 1000;
/// How often another server's erasure log is read (MSC4243.md §2.4 item 29: at least every
/// three days; we read daily).
pub const ERASURE_POLL_EVERY_MS: i64 = 24 * 60 * 60 * 1000;
/// Erasures asked for per request (`erasure.limit`; responders cap it at 2048).
pub const ERASURE_PAGE: i64 = 2048;
/// Pages read from one server per poll; the rest waits for the next poll.
pub const ERASURE_PAGES_PER_POLL: usize = 8;
/// Servers polled per background round.
pub const ERASURE_POLLS_PER_ROUND: i64 = 16;

/// The requester's half of `/query/accounts` (see the module docs).
#[derive(Debug)]
pub struct AccountVerifier {
    accounts: Arc<AccountKeys>,
    federation: Arc<Outbound>,
    store: Store,
    /// Key-form users being asked about right now: a second caller does not ask again.
    asking: Mutex<HashSet<String>>,
    /// Set while the background retries run: their stop signal.
    stop: Mutex<Option<tokio::sync::watch::Sender<bool>>>,
}

/// What one round of asking did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Asked {
    /// `/query/accounts` requests sent.
    pub requests: usize,
    /// Keys now verified (or found erased).
    pub settled: usize,
    /// Keys still unverified.
    pub unverified: usize,
}

impl AccountVerifier {
    pub fn new(accounts: Arc<AccountKeys>, federation: Arc<Outbound>, store: Store) -> Self {
        AccountVerifier {
            accounts,
            federation,
            store,
            asking: Mutex::new(HashSet::new()),
            stop: Mutex::new(None),
        }
    }

    /// Asks the claimed domains about those of `user_ids` that are key-form ids of other
    /// servers, not known yet (local, verified or erased) and due (never asked, or past their
    /// retry time), and records what they said. Ids that are not key-form are ignored.
    pub async fn verify(&self, user_ids: &[String]) -> Result<Asked> {
        let now = now_millis();
        let mut candidates: Vec<KeyFormUserId> = Vec::new();
        for id in user_ids {
            let Ok(user) = KeyFormUserId::parse(id) else {
                continue;
            };
            if user.server_name == self.federation.server_name().as_str()
                || self.accounts.lookup(&user) != KeyVerification::Unverified
            {
                continue;
            }
            candidates.push(user);
        }
        if candidates.is_empty() {
            return Ok(Asked::default());
        }
        // Not due yet: asked before, with a retry time still ahead.
        let ids: Vec<String> = candidates.iter().map(ToString::to_string).collect();
        let not_due: HashSet<String> = self
            .store
            .account_keys_by_user_ids(&ids)
            .await?
            .into_iter()
            .filter(|row| row.next_attempt_ts.is_some_and(|at| at > now))
            .map(|row| row.user_id)
            .collect();
        candidates.retain(|user| !not_due.contains(&user.to_string()));
        self.ask(candidates).await
    }

    /// Asks again about the unverified keys whose retry time has come and that are still
    /// members of a room here (at most [`RETRY_BATCH`] per round; claimed in the store first,
    /// so several processes over one database do not ask twice).
    pub async fn retry_due(&self) -> Result<Asked> {
        let now = now_millis();
        let due = self
            .store
            .claim_due_account_keys(now, now + RETRY_LEASE_MS, RETRY_BATCH)
            .await?;
        let users = due
            .iter()
            .filter_map(|id| KeyFormUserId::parse(id).ok())
            .collect();
        self.ask(users).await
    }

    /// Reads the erasure logs of the servers that are due (see [`Self::poll_erasures`]), a few
    /// per round. Returns the keys found erased.
    pub async fn poll_due_erasures(&self) -> Result<usize> {
        let now = now_millis();
        let due = self
            .store
            .erasure_polls_due(now - ERASURE_POLL_EVERY_MS, ERASURE_POLLS_PER_ROUND)
            .await?;
        let mut erased = 0;
        for (domain, after) in due {
            erased += self.poll_erasures(&domain, after).await?;
        }
        Ok(erased)
    }

    /// Reads `domain`'s erasure log after position `after` (MSC4243.md §2.4 items 28–30):
    /// `/query/accounts` with no keys and an `erasure` cursor, page after page while it says
    /// there is more (at most [`ERASURE_PAGES_PER_POLL`]). Each erased key this server knows for
    /// that domain is judged by the crate's classifier (only a validly signed `M_ERASED` for the
    /// domain counts; a forged one is ignored) and recorded, which deletes its name and hides
    /// its events. The position read up to is kept. Returns the keys found erased; a server
    /// that does not answer is polled again next round.
    pub async fn poll_erasures(&self, domain: &str, after: i64) -> Result<usize> {
        let Ok(server) = <&ServerName>::try_from(domain) else {
            return Ok(0);
        };
        let mut cursor = after;
        let mut erased = 0;
        for _ in 0..ERASURE_PAGES_PER_POLL {
            let mut request = query_accounts::Request::new(Vec::new());
            request.erasure = Some(query_accounts::ErasureCursor {
                id: cursor,
                limit: ERASURE_PAGE,
            });
            let answer = tokio::time::timeout(
                REQUEST_TIMEOUT,
                self.federation
                    .send_limited(server, request, MAX_ANSWER_BYTES),
            )
            .await;
            let body = match answer {
                Ok(Ok(response)) => response.body,
                Ok(Err(err)) => {
                    tracing::info!(%domain, %err, "reading an erasure log failed");
                    return Ok(erased);
                }
                Err(_) => {
                    tracing::info!(%domain, "reading an erasure log timed out");
                    return Ok(erased);
                }
            };
            // Only the keys this server holds for that domain matter (a flood of others is
            // not stored).
            let listed: Vec<String> = body
                .get("account_keys")
                .and_then(Value::as_object)
                .map(|keys| keys.keys().map(|key| format!("@{key}:{domain}")).collect())
                .unwrap_or_default();
            let known: HashSet<String> = self
                .store
                .account_keys_by_user_ids(&listed)
                .await?
                .into_iter()
                .filter(|row| row.domain == domain)
                .map(|row| row.user_id)
                .collect();
            for id in listed.iter().filter(|id| known.contains(*id)) {
                let Ok(user) = KeyFormUserId::parse(id) else {
                    continue;
                };
                let answer: Option<CanonicalJsonObject> = body
                    .get("account_keys")
                    .and_then(|keys| keys.get(user.key.as_str()))
                    .and_then(|value| CanonicalJsonValue::try_from(value.clone()).ok())
                    .and_then(|value| match value {
                        CanonicalJsonValue::Object(object) => Some(object),
                        _ => None,
                    });
                if classify_answer(&user, answer.as_ref()) == AnswerVerdict::Erased {
                    let attestation = answer.as_ref().map(to_canonical_string).unwrap_or_default();
                    let recorded = RemoteKeyVerdict::Erased {
                        attestation: &attestation,
                    };
                    if self.record(&user, &recorded).await? == KeyVerification::Erased {
                        erased += 1;
                        tracing::info!(user = %user, "another server erased an account key");
                    }
                } else {
                    tracing::info!(%domain, user = %user, "an erasure log lists a key without a valid erasure");
                }
            }
            // (`Map` indexing panics on a missing key: read with `get`.)
            let erasure = body.get("erasure");
            let next = erasure
                .and_then(|e| e.get("id"))
                .and_then(Value::as_i64)
                .unwrap_or(cursor);
            let more = erasure
                .and_then(|e| e.get("has_more"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            // A position never moves back; one that does not move ends the poll.
            let moved = next > cursor;
            cursor = cursor.max(next);
            self.store
                .set_erasure_cursor(domain, cursor, now_millis())
                .await?;
            if !more || !moved {
                break;
            }
        }
        Ok(erased)
    }

    /// Starts the background retry rounds (once; [`Self::stop`] ends them).
    pub fn start(self: &Arc<Self>) {
        let mut stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        if stop.is_some() {
            return;
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        *stop = Some(tx);
        tokio::spawn(self.clone().run_retries(rx));
    }

    /// Ends the background retry rounds (a round in flight finishes its requests).
    pub fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = stop.send(true);
        }
    }

    /// Runs [`Self::retry_due`] every [`RETRY_INTERVAL`] until `stop` turns true.
    async fn run_retries(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RETRY_INTERVAL) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            match self.retry_due().await {
                Ok(asked) if asked.requests > 0 => {
                    tracing::info!(
                        requests = asked.requests,
                        verified = asked.settled,
                        unverified = asked.unverified,
                        "asked again about unverified account keys"
                    );
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(%err, "retrying unverified account keys failed"),
            }
            if let Err(err) = self.poll_due_erasures().await {
                tracing::warn!(%err, "reading other servers' erasure logs failed");
            }
        }
    }

    /// Asks each claimed domain about `users` (other servers' key-form users), skipping those
    /// another caller is asking about right now.
    async fn ask(&self, users: Vec<KeyFormUserId>) -> Result<Asked> {
        let mut by_domain: BTreeMap<String, Vec<KeyFormUserId>> = BTreeMap::new();
        {
            let mut asking = self.asking.lock().unwrap_or_else(|p| p.into_inner());
            for user in users {
                if !asking.insert(user.to_string()) {
                    continue;
                }
                by_domain
                    .entry(user.server_name.clone())
                    .or_default()
                    .push(user);
            }
        }
        let mut asked = Asked::default();
        for (domain, users) in by_domain {
            for batch in users.chunks(MAX_QUERY_KEYS) {
                let outcome = self.ask_domain(&domain, batch).await;
                {
                    let mut asking = self.asking.lock().unwrap_or_else(|p| p.into_inner());
                    for user in batch {
                        asking.remove(&user.to_string());
                    }
                }
                let (requests, settled) = outcome?;
                asked.requests += requests;
                asked.settled += settled;
                asked.unverified += batch.len() - settled;
            }
        }
        Ok(asked)
    }

    /// One request to `domain` about `batch` (all claiming it); the verdicts recorded.
    /// Returns (requests sent, keys settled).
    async fn ask_domain(&self, domain: &str, batch: &[KeyFormUserId]) -> Result<(usize, usize)> {
        let Ok(server) = <&ServerName>::try_from(domain) else {
            // Not a server name: nobody to ask, and never verifiable.
            for user in batch {
                self.record(user, &unverified("bad_domain", RETRY_DISOWNED_MS))
                    .await?;
            }
            return Ok((0, 0));
        };
        let keys: Vec<String> = batch.iter().map(|u| u.key.as_str().to_owned()).collect();
        let sent = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.federation.send_limited(
                server,
                query_accounts::Request::new(keys),
                MAX_ANSWER_BYTES,
            ),
        )
        .await;
        let answers = match sent {
            Ok(Ok(response)) => response.body.get("account_keys").cloned(),
            Ok(Err(err)) => {
                tracing::info!(%domain, keys = batch.len(), %err, "a /query/accounts request failed");
                None
            }
            Err(_) => {
                tracing::info!(%domain, keys = batch.len(), "a /query/accounts request timed out");
                None
            }
        };
        let Some(Value::Object(answers)) = answers else {
            // Unreachable, an error status or no `account_keys` object: every key of the batch
            // stays unverified, asked again before those the domain disowned.
            for user in batch {
                self.record(user, &unverified("unreachable", RETRY_UNANSWERED_MS))
                    .await?;
            }
            return Ok((1, 0));
        };
        let mut settled = 0;
        for user in batch {
            let answer: Option<CanonicalJsonObject> = answers
                .get(user.key.as_str())
                .and_then(|value| CanonicalJsonValue::try_from(value.clone()).ok())
                .and_then(|value| match value {
                    CanonicalJsonValue::Object(object) => Some(object),
                    _ => None,
                });
            let verdict = classify_answer(user, answer.as_ref());
            let attestation;
            let recorded = match &verdict {
                AnswerVerdict::Verified { account_name } => RemoteKeyVerdict::Verified {
                    account_name: account_name.as_str(),
                },
                AnswerVerdict::Erased => {
                    attestation = answer.as_ref().map(to_canonical_string).unwrap_or_default();
                    RemoteKeyVerdict::Erased {
                        attestation: &attestation,
                    }
                }
                AnswerVerdict::Unverified(Unverified::Missing) => {
                    unverified("missing", RETRY_UNANSWERED_MS)
                }
                AnswerVerdict::Unverified(reason) => {
                    tracing::info!(%domain, user = %user, ?reason, "a /query/accounts answer does not verify the key");
                    unverified(reason_name(reason), RETRY_DISOWNED_MS)
                }
            };
            if self.record(user, &recorded).await? != KeyVerification::Unverified {
                settled += 1;
            }
        }
        Ok((1, settled))
    }

    async fn record(
        &self,
        user: &KeyFormUserId,
        verdict: &RemoteKeyVerdict<'_>,
    ) -> Result<KeyVerification> {
        self.accounts.record_remote(user, verdict).await
    }
}

fn unverified(outcome: &'static str, retry_in_ms: i64) -> RemoteKeyVerdict<'static> {
    RemoteKeyVerdict::Unverified {
        outcome,
        next_attempt_ts: now_millis() + retry_in_ms,
    }
}

fn reason_name(reason: &Unverified) -> &'static str {
    match reason {
        Unverified::Missing => "missing",
        Unverified::Unknown { .. } => "unknown",
        Unverified::Malformed => "malformed",
        Unverified::BadSignature => "bad_signature",
        Unverified::WrongDomain => "wrong_domain",
        Unverified::BadAccountName => "bad_account_name",
    }
}

/// How long a join through another server into an account-key room waits for the room's
/// members to be verified before the room reaches clients (item 23: bounded, so a silent
/// domain cannot hold a room back; its members are asked again later).
pub const JOIN_VERIFY_WAIT: Duration = Duration::from_secs(5);

/// The key-form users events name (senders, and member events' state keys), without
/// duplicates: who an account-key room's events make this server need to know.
pub fn users_named(events: &[&[u8]]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        sender: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
        state_key: Option<String>,
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for bytes in events {
        let Ok(named) = serde_json::from_slice::<Named>(bytes) else {
            continue;
        };
        let member = (named.kind.as_deref() == Some("m.room.member"))
            .then_some(named.state_key)
            .flatten();
        for id in named.sender.into_iter().chain(member) {
            if KeyFormUserId::parse(&id).is_ok() && seen.insert(id.clone()) {
                out.push(id);
            }
        }
    }
    out
}

impl crate::Services {
    /// Asks, in the background, about the key-form users that events of an account-key room
    /// name and this server does not know yet (nothing for other rooms). Failures are logged:
    /// the keys stay unverified and are asked again later.
    pub(crate) fn verify_named_later(
        &self,
        version: &myelin_room_version::RoomVersion,
        events: &[&[u8]],
    ) {
        if !version.uses_account_keys() {
            return;
        }
        let users = users_named(events);
        if users.is_empty() {
            return;
        }
        let verifier = self.account_verifier.clone();
        tokio::spawn(async move {
            if let Err(err) = verifier.verify(&users).await {
                tracing::warn!(%err, "asking other servers about account keys failed");
            }
        });
    }

    /// Asks about the key-form users `events` name, waiting at most `wait` (the rest carries on
    /// in the background).
    pub(crate) async fn verify_named(&self, events: &[&[u8]], wait: Duration) {
        let users = users_named(events);
        if users.is_empty() {
            return;
        }
        let verifier = self.account_verifier.clone();
        let asking = tokio::spawn(async move { verifier.verify(&users).await });
        match tokio::time::timeout(wait, asking).await {
            Ok(Ok(Ok(asked))) => {
                tracing::info!(
                    requests = asked.requests,
                    verified = asked.settled,
                    unverified = asked.unverified,
                    "asked other servers about a room's account keys"
                );
            }
            Ok(Ok(Err(err))) => {
                tracing::warn!(%err, "asking other servers about account keys failed")
            }
            Ok(Err(err)) => tracing::warn!(%err, "asking other servers about account keys failed"),
            Err(_) => tracing::info!(
                ?wait,
                "a room's account keys are still being asked about; the room is shown meanwhile"
            ),
        }
    }
}

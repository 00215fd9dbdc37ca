//! Asking other servers who their account keys are (MSC4243.md §2.3 items 20–24): the
//! requester's half of `/query/accounts`. Key-form users this server does not know yet are
//! grouped by the domain they claim, asked in batches of at most [`MAX_QUERY_KEYS`]
//! ([`CONCURRENT_BATCHES`] in flight), each request bounded in time and in answer size and
//! sent through [`Outbound`] (so the per-domain backoff of the transport applies: a
//! forged-domain flood costs that domain a few batches per backoff window). Each per-key
//! answer is judged by the room version's classifier (`query_accounts::classify_answer`, the
//! one judgement) and one answer's verdicts are recorded together through
//! [`AccountKeys::record_remote_many`], the one way verdicts enter the store and the client
//! projection. What the asking sends and gets is counted ([`AccountVerifier::totals`], shown
//! by `/metrics`).
//!
//! Pacing (§2.8 item 43): the keys inbound events name are asked about through
//! [`AccountVerifier::verify_later`], which holds a domain's keys for one window after that
//! domain disowned keys and then asks about them together, so a flood of forged members costs
//! the domain one request per 2048 keys per window.
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
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
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
/// Batches (of up to [`MAX_QUERY_KEYS`] keys) in flight at once: a 10,000-member room's five
/// go together, so that the domain signs its answers while this server checks the ones that
/// came. A domain that does not answer gets at most this many requests before its backoff
/// turns the rest of a round away.
pub const CONCURRENT_BATCHES: usize = 4;
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
    /// What the asking has sent and got since start-up (read by `/metrics`).
    counters: QueryCounters,
    /// Per domain: the window during which keys that events name wait (see [`Self::verify_later`]).
    paces: Mutex<HashMap<String, Pace>>,
    /// How long a domain that disowned keys is left alone by event-driven asks (the per-domain
    /// backoff's first window, `federation.backoff_min_secs`).
    pace_window: Duration,
}

/// One domain's pacing of event-driven asks (MSC4243.md §2.8 item 43: a flood of forged members
/// must cost their claimed domain at most one batched query per 2048 keys per window).
#[derive(Debug, Default)]
struct Pace {
    /// Event-driven asks wait until then.
    until: Option<Instant>,
    /// The keys waiting, in order, without duplicates.
    queued: Vec<String>,
    /// Whether a task asks about `queued` when the window ends.
    flushing: bool,
}

/// The most keys one domain's pacing holds; more are dropped (asked when named again).
const MAX_PACED_KEYS: usize = 64 * 1024;

/// The running totals of this server's `/query/accounts` asking since it started (key batches
/// and erasure-log pages alike), counted where each request is sent. Bytes are those of the
/// JSON bodies as serialised (the request as sent; the answer as read, re-serialised compactly:
/// the size of a compact answer), not of HTTP heads or TLS.
#[derive(Debug, Default)]
struct QueryCounters {
    requests_ok: AtomicU64,
    requests_error: AtomicU64,
    requests_timeout: AtomicU64,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
    keys_asked: AtomicU64,
    keys_verified: AtomicU64,
}

/// A reading of [`AccountVerifier`]'s counters (see [`AccountVerifier::totals`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueryTotals {
    /// Requests answered with a JSON object (whatever it said about each key).
    pub requests_ok: u64,
    /// Requests that failed: no connection, an error status, an unreadable or oversized answer,
    /// or refused locally while the domain backs off.
    pub requests_error: u64,
    /// Requests that took longer than [`REQUEST_TIMEOUT`].
    pub requests_timeout: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Keys asked about (a key asked twice counts twice).
    pub keys_asked: u64,
    /// Keys an answer verified.
    pub keys_verified: u64,
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
    /// Bytes of the requests' bodies.
    pub request_bytes: u64,
    /// Bytes of the answers' bodies.
    pub response_bytes: u64,
}

/// What one `/query/accounts` request brought back.
struct Answer {
    /// The answer's body, or `None` when the request failed or timed out (logged).
    body: Option<serde_json::Map<String, Value>>,
    request_bytes: u64,
    response_bytes: u64,
}

impl AccountVerifier {
    /// `pace_window`: how long event-driven asks leave a domain alone after it disowned keys.
    pub fn new(
        accounts: Arc<AccountKeys>,
        federation: Arc<Outbound>,
        store: Store,
        pace_window: Duration,
    ) -> Self {
        AccountVerifier {
            accounts,
            federation,
            store,
            asking: Mutex::new(HashSet::new()),
            stop: Mutex::new(None),
            counters: QueryCounters::default(),
            paces: Mutex::new(HashMap::new()),
            pace_window,
        }
    }

    /// [`Self::verify`] for keys that events arriving from other servers name, paced per
    /// claimed domain: once a domain has disowned keys (`M_UNKNOWN`, a bad answer), the keys of
    /// that domain named during the next `pace_window` wait and are asked about together when
    /// it ends (batches of 2048), so that a stooge server sending forged members of a victim
    /// domain transaction after transaction costs the victim one request per 2048 keys per
    /// window, not one per transaction. Domains that answer for their keys are asked at once.
    pub async fn verify_later(self: &Arc<Self>, user_ids: Vec<String>) -> Result<Asked> {
        let now = Instant::now();
        let mut at_once = Vec::new();
        {
            let mut paces = self.paces.lock().unwrap_or_else(|p| p.into_inner());
            for id in user_ids {
                let Ok(user) = KeyFormUserId::parse(&id) else {
                    continue;
                };
                match paces.get_mut(&user.server_name) {
                    Some(pace) if pace.until.is_some_and(|until| until > now) => {
                        if pace.queued.len() < MAX_PACED_KEYS && !pace.queued.contains(&id) {
                            pace.queued.push(id);
                        }
                        if !pace.flushing {
                            pace.flushing = true;
                            let until = pace.until.unwrap_or(now);
                            let verifier = self.clone();
                            let domain = user.server_name.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep_until(until.into()).await;
                                let queued = {
                                    let mut paces =
                                        verifier.paces.lock().unwrap_or_else(|p| p.into_inner());
                                    let pace = paces.entry(domain).or_default();
                                    pace.flushing = false;
                                    std::mem::take(&mut pace.queued)
                                };
                                if let Err(err) = verifier.verify(&queued).await {
                                    tracing::warn!(%err, "asking other servers about account keys failed");
                                }
                            });
                        }
                    }
                    _ => at_once.push(id),
                }
            }
        }
        self.verify(&at_once).await
    }

    /// Starts `domain`'s pacing window (it disowned keys).
    fn pace(&self, domain: &str) {
        let mut paces = self.paces.lock().unwrap_or_else(|p| p.into_inner());
        paces.entry(domain.to_owned()).or_default().until = Some(Instant::now() + self.pace_window);
    }

    /// The counters of the asking so far.
    pub fn totals(&self) -> QueryTotals {
        let c = &self.counters;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        QueryTotals {
            requests_ok: read(&c.requests_ok),
            requests_error: read(&c.requests_error),
            requests_timeout: read(&c.requests_timeout),
            request_bytes: read(&c.request_bytes),
            response_bytes: read(&c.response_bytes),
            keys_asked: read(&c.keys_asked),
            keys_verified: read(&c.keys_verified),
        }
    }

    /// Other servers' keys held unverified now (one store count).
    pub async fn unverified_count(&self) -> Result<i64> {
        Ok(self.store.unverified_account_key_count().await?)
    }

    /// Sends one `/query/accounts` request to `server` (bounded in time and answer size) and
    /// counts it: its outcome and the bytes each way.
    async fn send_query(&self, server: &ServerName, request: query_accounts::Request) -> Answer {
        let request_bytes = query_body_bytes(&request);
        let keys = request.account_keys.len();
        let sent = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.federation
                .send_limited(server, request, MAX_ANSWER_BYTES),
        )
        .await;
        let c = &self.counters;
        c.request_bytes.fetch_add(request_bytes, Ordering::Relaxed);
        c.keys_asked.fetch_add(keys as u64, Ordering::Relaxed);
        let body = match sent {
            Ok(Ok(response)) => {
                c.requests_ok.fetch_add(1, Ordering::Relaxed);
                Some(response.body)
            }
            Ok(Err(err)) => {
                c.requests_error.fetch_add(1, Ordering::Relaxed);
                tracing::info!(domain = %server, keys, %err, "a /query/accounts request failed");
                None
            }
            Err(_) => {
                c.requests_timeout.fetch_add(1, Ordering::Relaxed);
                tracing::info!(domain = %server, keys, "a /query/accounts request timed out");
                None
            }
        };
        let response_bytes = body.as_ref().map_or(0, |body| {
            serde_json::to_vec(body).map_or(0, |b| b.len() as u64)
        });
        c.response_bytes
            .fetch_add(response_bytes, Ordering::Relaxed);
        Answer {
            body,
            request_bytes,
            response_bytes,
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
            let Some(body) = self.send_query(server, request).await.body else {
                // Failed or timed out (logged): polled again next round.
                return Ok(erased);
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
    /// another caller is asking about right now. The batches go [`CONCURRENT_BATCHES`] at a
    /// time; each lets go of its users when it is done, whatever its outcome.
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
        let batches: Vec<(String, Vec<KeyFormUserId>)> = by_domain
            .into_iter()
            .flat_map(|(domain, users)| {
                users
                    .chunks(MAX_QUERY_KEYS)
                    .map(|batch| (domain.clone(), batch.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let asking = batches
            .into_iter()
            .map(|(domain, batch)| self.ask_and_release(domain, batch));
        let outcomes: Vec<Result<Asked>> = futures::stream::iter(asking)
            .buffer_unordered(CONCURRENT_BATCHES)
            .collect()
            .await;
        let mut asked = Asked::default();
        for outcome in outcomes {
            let batch = outcome?;
            asked.requests += batch.requests;
            asked.settled += batch.settled;
            asked.unverified += batch.unverified;
            asked.request_bytes += batch.request_bytes;
            asked.response_bytes += batch.response_bytes;
        }
        Ok(asked)
    }

    /// [`Self::ask_domain`], then lets go of the batch's users (whatever the outcome).
    async fn ask_and_release(&self, domain: String, batch: Vec<KeyFormUserId>) -> Result<Asked> {
        let outcome = self.ask_domain(&domain, &batch).await;
        let mut asking = self.asking.lock().unwrap_or_else(|p| p.into_inner());
        for user in &batch {
            asking.remove(&user.to_string());
        }
        outcome
    }

    /// One request to `domain` about `batch` (all claiming it); the verdicts recorded.
    async fn ask_domain(&self, domain: &str, batch: &[KeyFormUserId]) -> Result<Asked> {
        let Ok(server) = <&ServerName>::try_from(domain) else {
            // Not a server name: nobody to ask, and never verifiable.
            let verdict = unverified("bad_domain", RETRY_DISOWNED_MS);
            let verdicts: Vec<_> = batch.iter().map(|user| (user, verdict.clone())).collect();
            self.accounts.record_remote_many(domain, &verdicts).await?;
            return Ok(Asked {
                unverified: batch.len(),
                ..Asked::default()
            });
        };
        let keys: Vec<String> = batch.iter().map(|u| u.key.as_str().to_owned()).collect();
        let answer = self
            .send_query(server, query_accounts::Request::new(keys))
            .await;
        let mut asked = Asked {
            requests: 1,
            request_bytes: answer.request_bytes,
            response_bytes: answer.response_bytes,
            ..Asked::default()
        };
        let Some(Value::Object(answers)) =
            answer.body.and_then(|mut body| body.remove("account_keys"))
        else {
            // Unreachable, an error status or no `account_keys` object: every key of the batch
            // stays unverified, asked again before those the domain disowned.
            let verdict = unverified("unreachable", RETRY_UNANSWERED_MS);
            let verdicts: Vec<_> = batch.iter().map(|user| (user, verdict.clone())).collect();
            self.accounts.record_remote_many(domain, &verdicts).await?;
            asked.unverified = batch.len();
            return Ok(asked);
        };
        // Checking 2048 signatures is CPU work: off the async workers, so that the batches in
        // flight are judged on every core.
        let users = batch.to_vec();
        let judged = tokio::task::spawn_blocking(move || judge_answers(&users, &answers))
            .await
            .map_err(|err| crate::Error::Internal(format!("judging an answer: {err}")))?;
        let verdicts: Vec<(&KeyFormUserId, RemoteKeyVerdict<'_>)> = batch
            .iter()
            .zip(&judged)
            .map(|(user, judged)| {
                let verdict = match judged {
                    Judged::Verified { account_name } => {
                        RemoteKeyVerdict::Verified { account_name }
                    }
                    Judged::Erased { attestation } => RemoteKeyVerdict::Erased { attestation },
                    Judged::Unverified {
                        outcome,
                        retry_in_ms,
                    } => unverified(outcome, *retry_in_ms),
                };
                (user, verdict)
            })
            .collect();
        let states = self.accounts.record_remote_many(domain, &verdicts).await?;
        if judged
            .iter()
            .any(|judged| matches!(judged, Judged::Unverified { .. }))
        {
            self.pace(domain);
        }
        for state in states {
            match state {
                KeyVerification::Unverified => asked.unverified += 1,
                KeyVerification::Verified { .. } => {
                    self.counters.keys_verified.fetch_add(1, Ordering::Relaxed);
                    asked.settled += 1;
                }
                _ => asked.settled += 1,
            }
        }
        Ok(asked)
    }

    async fn record(
        &self,
        user: &KeyFormUserId,
        verdict: &RemoteKeyVerdict<'_>,
    ) -> Result<KeyVerification> {
        self.accounts.record_remote(user, verdict).await
    }
}

/// What an answer said about one key, judged (see [`judge_answers`]).
enum Judged {
    Verified {
        account_name: String,
    },
    Erased {
        attestation: String,
    },
    Unverified {
        outcome: &'static str,
        retry_in_ms: i64,
    },
}

/// Judges `answers` (a `/query/accounts` answer's `account_keys`) for each of `users` by the
/// room version's classifier, in order. A key the domain left out is asked again before one it
/// disowned.
fn judge_answers(users: &[KeyFormUserId], answers: &serde_json::Map<String, Value>) -> Vec<Judged> {
    users
        .iter()
        .map(|user| {
            let answer: Option<CanonicalJsonObject> = answers
                .get(user.key.as_str())
                .and_then(|value| CanonicalJsonValue::try_from(value.clone()).ok())
                .and_then(|value| match value {
                    CanonicalJsonValue::Object(object) => Some(object),
                    _ => None,
                });
            match classify_answer(user, answer.as_ref()) {
                AnswerVerdict::Verified { account_name } => Judged::Verified { account_name },
                AnswerVerdict::Erased => Judged::Erased {
                    attestation: answer.as_ref().map(to_canonical_string).unwrap_or_default(),
                },
                AnswerVerdict::Unverified(Unverified::Missing) => Judged::Unverified {
                    outcome: "missing",
                    retry_in_ms: RETRY_UNANSWERED_MS,
                },
                AnswerVerdict::Unverified(reason) => {
                    tracing::info!(domain = %user.server_name, user = %user, ?reason, "a /query/accounts answer does not verify the key");
                    Judged::Unverified {
                        outcome: reason_name(&reason),
                        retry_in_ms: RETRY_DISOWNED_MS,
                    }
                }
            }
        })
        .collect()
}

/// The bytes of `request`'s JSON body as sent (the ruma request serialises the same fields).
fn query_body_bytes(request: &query_accounts::Request) -> u64 {
    let mut body = serde_json::Map::new();
    body.insert(
        "account_keys".to_owned(),
        Value::from(request.account_keys.clone()),
    );
    if let Some(cursor) = request.erasure {
        body.insert("erasure".to_owned(), serde_json::json!(cursor));
    }
    serde_json::to_vec(&body).map_or(0, |b| b.len() as u64)
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
            if let Err(err) = verifier.verify_later(users).await {
                tracing::warn!(%err, "asking other servers about account keys failed");
            }
        });
    }

    /// Asks about the key-form users `events` name, waiting at most `wait` (the rest carries on
    /// in the background). When the round ends, in time or later, one line says what it did
    /// and how long it took from this call (what a join's "time until all verified" is).
    pub(crate) async fn verify_named(&self, events: &[&[u8]], wait: Duration) {
        let users = users_named(events);
        if users.is_empty() {
            return;
        }
        let verifier = self.account_verifier.clone();
        let started = Instant::now();
        let asking = tokio::spawn(async move {
            match verifier.verify(&users).await {
                Ok(asked) => tracing::info!(
                    named = users.len(),
                    requests = asked.requests,
                    verified = asked.settled,
                    unverified = asked.unverified,
                    request_bytes = asked.request_bytes,
                    response_bytes = asked.response_bytes,
                    elapsed_ms = started.elapsed().as_millis(),
                    "asked other servers about a room's account keys"
                ),
                Err(err) => tracing::warn!(%err, "asking other servers about account keys failed"),
            }
        });
        match tokio::time::timeout(wait, asking).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(%err, "asking other servers about account keys failed"),
            Err(_) => tracing::info!(
                ?wait,
                "a room's account keys are still being asked about; the room is shown meanwhile"
            ),
        }
    }
}

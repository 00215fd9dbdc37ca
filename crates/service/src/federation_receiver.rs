//! The federation receiver: what other servers push to this one with
//! `PUT /_matrix/federation/v1/send/{txnId}`.
//!
//! A transaction holds at most [`MAX_PDUS`] PDUs and [`MAX_EDUS`] EDUs (more is refused whole,
//! 400, as Synapse does). It is processed once per `(origin, txnId)`: the answer is stored
//! (`Store::record_inbound_txn`, kept a day) and a retransmission gets it back without the
//! transaction being processed again.
//!
//! One transaction per origin at a time. The spec has a sender wait for its 200 before it sends
//! the next transaction, so a second transaction of the same origin is either the same one
//! retransmitted after the sender gave up waiting, or a sender (or test harness) that does not
//! wait. Both *wait* for the one being processed rather than being refused: the retransmission
//! then finds the stored answer (a 429 would only make it come back for the same answer later),
//! and the impatient sender is served in order. Waiting is bounded: past
//! [`MAX_QUEUED_PER_ORIGIN`] transactions of one origin in process or waiting, the next is
//! answered 429 `M_LIMIT_EXCEEDED`, so a peer cannot pile up connections and buffered bodies.
//! A transaction is processed in a task of its own: if the sender hangs up, the work still ends
//! and its answer is stored for the retransmission.
//!
//! PDUs ([`pdus`]): grouped by room, refused each for rooms this server is not in or whose ACL
//! denies the origin, else handed to [`crate::rooms::Rooms::receive_pdus`] with the keys of the
//! servers that signed them; what they cite and this server lacks is fetched within bounds
//! ([`fetch`]). EDUs ([`edus`]): typing, receipts, presence, to-device messages and device-list
//! updates, each only for users of the origin and rooms whose ACL admits it.

mod edus;
mod fetch;
mod pdus;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    },
};

use ruma::OwnedServerName;
use serde_json::value::RawValue;

use crate::{Error, Result, Services, now_millis};

pub(crate) use fetch::FetchBudget;
pub use fetch::{KEY_FETCH_TIME, MAX_FETCHED_EVENTS, MAX_PDU_BYTES, MISSING_EVENTS_LIMIT};

/// The most PDUs a transaction may hold (the spec's limit).
pub const MAX_PDUS: usize = 50;
/// The most EDUs a transaction may hold (the spec's limit).
pub const MAX_EDUS: usize = 100;
/// The largest body of a transaction read: 50 PDUs and 100 EDUs of the spec's 64 KiB each,
/// and their envelope. Above the JSON cap of other routes (1 MiB by default), which a full
/// transaction of ordinary events exceeds; still under `http.max_request_size`.
pub const MAX_TRANSACTION_BYTES: usize = (MAX_PDUS + MAX_EDUS) * (MAX_PDU_BYTES + 1) + 64 * 1024;
/// Transactions of one origin in process or waiting for their turn, past which the next is
/// answered 429.
pub const MAX_QUEUED_PER_ORIGIN: usize = 3;
/// How long the answer to a transaction is kept for retransmissions: senders retry for minutes
/// to hours, not days.
pub const TXN_ANSWER_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;
/// How often old answers are pruned (on the way out of a transaction).
const PRUNE_EVERY_MS: i64 = 10 * 60 * 1000;
/// What a sender refused for a full queue is told to wait.
const QUEUE_FULL_RETRY_MS: u64 = 1_000;

/// A transaction as it came: its origin (checked by the request's X-Matrix signature, which is
/// what counts, not the body's `origin`), its id, and its PDUs and EDUs as raw JSON.
#[derive(Debug)]
pub struct InboundTransaction {
    pub origin: OwnedServerName,
    pub txn_id: String,
    pub pdus: Vec<Box<RawValue>>,
    pub edus: Vec<Box<RawValue>>,
}

/// The answer to a transaction: for each PDU that could be named, `None` if it was processed,
/// else the error (`{"pdus": {event_id: {} | {"error": ...}}}`).
pub type PduResults = BTreeMap<String, Option<String>>;

/// The per-origin turns, and when old answers were last pruned.
#[derive(Debug, Default)]
pub struct InboundTransactions {
    origins: Mutex<HashMap<OwnedServerName, Arc<OriginQueue>>>,
    last_prune: AtomicI64,
}

/// One origin's transactions: one holds the turn, the others wait for it.
#[derive(Debug, Default)]
struct OriginQueue {
    turn: tokio::sync::Mutex<()>,
    queued: AtomicUsize,
}

/// A place in an origin's queue; leaving it (dropping this) frees the place.
struct QueuePlace(Arc<OriginQueue>);

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

impl InboundTransactions {
    /// How many transactions of `origin` are in process or waiting for their turn.
    pub fn queued(&self, origin: &str) -> usize {
        self.origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(name, _)| name.as_str() == origin)
            .map_or(0, |(_, queue)| queue.queued.load(Ordering::SeqCst))
    }

    /// A place in `origin`'s queue, or 429 when it is full.
    fn enter(&self, origin: &OwnedServerName) -> Result<QueuePlace> {
        let mut origins = self.origins.lock().unwrap_or_else(|e| e.into_inner());
        if origins.len() > 64 {
            origins.retain(|_, queue| queue.queued.load(Ordering::SeqCst) > 0);
        }
        let queue = origins.entry(origin.clone()).or_default().clone();
        if queue.queued.fetch_add(1, Ordering::SeqCst) >= MAX_QUEUED_PER_ORIGIN {
            queue.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::LimitExceeded {
                retry_after_ms: QUEUE_FULL_RETRY_MS,
            });
        }
        Ok(QueuePlace(queue))
    }
}

impl Services {
    /// `PUT /_matrix/federation/v1/send/{txnId}` (see the module documentation).
    pub async fn receive_transaction(
        self: &Arc<Self>,
        transaction: InboundTransaction,
    ) -> Result<PduResults> {
        if transaction.pdus.len() > MAX_PDUS || transaction.edus.len() > MAX_EDUS {
            return Err(Error::BadJson(format!(
                "A transaction may hold at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
            )));
        }
        if let Some(answer) = self.stored_answer(&transaction).await? {
            return Ok(answer);
        }
        let place = self.inbound.enter(&transaction.origin)?;
        let services = self.clone();
        let task = tokio::spawn(async move {
            let _turn = place.0.turn.lock().await;
            // Processed while this one waited (a retransmission of the one before it).
            if let Some(answer) = services.stored_answer(&transaction).await? {
                return Ok(answer);
            }
            let answer = services.process_transaction(&transaction).await;
            let json = serde_json::to_string(&answer_json(&answer))
                .map_err(|e| Error::Internal(format!("serialising a transaction answer: {e}")))?;
            services
                .store
                .record_inbound_txn(
                    transaction.origin.as_str(),
                    &transaction.txn_id,
                    &json,
                    now_millis(),
                )
                .await?;
            services.prune_txn_answers_if_due().await;
            Ok(answer)
        });
        task.await
            .map_err(|e| Error::Internal(format!("transaction task: {e}")))?
    }

    /// The stored answer to a transaction already processed.
    async fn stored_answer(&self, transaction: &InboundTransaction) -> Result<Option<PduResults>> {
        let Some(json) = self
            .store
            .inbound_txn_response(transaction.origin.as_str(), &transaction.txn_id)
            .await?
        else {
            return Ok(None);
        };
        tracing::debug!(origin = %transaction.origin, txn_id = %transaction.txn_id, "retransmitted transaction answered from the store");
        Ok(Some(answer_from_json(&json)?))
    }

    async fn process_transaction(&self, transaction: &InboundTransaction) -> PduResults {
        let mut budget = fetch::FetchBudget::new();
        let answer = self
            .receive_transaction_pdus(&transaction.origin, &transaction.pdus, &mut budget)
            .await;
        // After the PDUs: a receipt may name an event of the same transaction.
        self.receive_transaction_edus(&transaction.origin, &transaction.edus)
            .await;
        tracing::info!(
            origin = %transaction.origin,
            txn_id = %transaction.txn_id,
            pdus = transaction.pdus.len(),
            edus = transaction.edus.len(),
            errors = answer.values().filter(|r| r.is_some()).count(),
            fetched = MAX_FETCHED_EVENTS - budget.events_left(),
            "processed a transaction"
        );
        answer
    }

    async fn prune_txn_answers_if_due(&self) {
        let now = now_millis();
        let last = self.inbound.last_prune.load(Ordering::SeqCst);
        if now - last < PRUNE_EVERY_MS
            || self
                .inbound
                .last_prune
                .compare_exchange(last, now, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return;
        }
        match self
            .store
            .prune_inbound_txns(now - TXN_ANSWER_RETENTION_MS)
            .await
        {
            Ok(pruned) => tracing::debug!(pruned, "pruned old transaction answers"),
            Err(err) => tracing::warn!(%err, "could not prune old transaction answers"),
        }
    }
}

/// The answer as the spec writes it.
fn answer_json(answer: &PduResults) -> serde_json::Value {
    let pdus: serde_json::Map<String, serde_json::Value> = answer
        .iter()
        .map(|(id, result)| {
            let value = match result {
                None => serde_json::json!({}),
                Some(error) => serde_json::json!({ "error": error }),
            };
            (id.clone(), value)
        })
        .collect();
    serde_json::json!({ "pdus": pdus })
}

fn answer_from_json(json: &str) -> Result<PduResults> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Error::Internal(format!("stored transaction answer: {e}")))?;
    let pdus = value["pdus"].as_object().cloned().unwrap_or_default();
    Ok(pdus
        .into_iter()
        .map(|(id, result)| (id, result["error"].as_str().map(str::to_owned)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_survive_the_store_round_trip() {
        let mut answer = PduResults::new();
        answer.insert("$a".to_owned(), None);
        answer.insert("$b".to_owned(), Some("no".to_owned()));
        let json = serde_json::to_string(&answer_json(&answer)).unwrap();
        assert_eq!(
            json, r#"{"pdus":{"$a":{},"$b":{"error":"no"}}}"#,
            "the spec's shape"
        );
        assert_eq!(answer_from_json(&json).unwrap(), answer);
    }

    #[test]
    fn an_origin_queue_holds_a_bounded_number() {
        let inbound = InboundTransactions::default();
        let origin: OwnedServerName = "peer.test".try_into().unwrap();
        let places: Vec<QueuePlace> = (0..MAX_QUEUED_PER_ORIGIN)
            .map(|_| inbound.enter(&origin).unwrap())
            .collect();
        assert!(matches!(
            inbound.enter(&origin),
            Err(Error::LimitExceeded { .. })
        ));
        let other: OwnedServerName = "other.test".try_into().unwrap();
        assert!(inbound.enter(&other).is_ok(), "queues are per origin");
        drop(places);
        assert!(inbound.enter(&origin).is_ok(), "places are freed");
    }
}

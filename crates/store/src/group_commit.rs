//! Group commit of events: sends that arrive while another commit is running wait for it and
//! are then committed together, in one transaction with one flush to disk, instead of one
//! transaction each.
//!
//! No background worker: each caller queues its event, then either its event is
//! committed by whoever leads the current batch, or it takes the lead itself and commits
//! everything queued so far (at most [`MAX_BATCH`]). A caller alone pays one task hand-off (the
//! commit runs in a task of its own, see below). Every caller returns only once its own event
//! is committed, so a 200 still means durably stored.
//!
//! A caller may queue several events as one entry (a run of received events of one room,
//! each citing the one before): an entry is never split between batches, and its events
//! commit in order, in one transaction, or not at all.
//!
//! If a batch fails, each of its entries is retried in a transaction of its own, so one bad
//! entry (a duplicate id, a broken reference) fails alone and the others land.
//!
//! Cancellation: a caller's future can be dropped at any await (its client hung up). An event
//! is committed while its caller's `hold` (the room's writer lock) lives, or never:
//!
//! - while the event is queued, dropping the caller removes it from the queue and drops its
//!   hold (a later leader would otherwise commit it after the lock was released, built on a
//!   head another writer may have moved on from: a fork);
//! - once a leader has taken it, the event and its hold travel together in the batch, which
//!   commits in a task of its own that no caller can cancel; the hold drops only after the
//!   batch's transaction has ended, committed or not.

use std::{
    any::Any,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::oneshot;

use crate::{NewEvent, OwnedNewEvent, Persisted, Store, StoreError};

/// The most events one transaction commits (unless one entry alone holds more): bounds how
/// long a batch holds the write lock.
const MAX_BATCH: usize = 64;

/// The queue of events waiting to be committed, and the lead of the batch being committed.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    queue: Mutex<Vec<Queued>>,
    lead: Arc<tokio::sync::Mutex<()>>,
    /// Tells queued entries apart, for a caller that goes away to find its own.
    next_id: AtomicU64,
    /// Test-only failpoint ([`Store::pause_commits`]): a batch's commit waits here (while a
    /// test holds it) before it starts its transaction, after announcing so on `reached`.
    #[cfg(any(test, feature = "failpoints"))]
    pause: Arc<tokio::sync::Mutex<()>>,
    #[cfg(any(test, feature = "failpoints"))]
    reached: tokio::sync::Notify,
    /// Test-only: how many events each transaction committed, in order
    /// ([`Store::take_commit_sizes`]).
    #[cfg(any(test, feature = "failpoints"))]
    sizes: Mutex<Vec<usize>>,
}

struct Queued {
    id: u64,
    /// Committed together, in order.
    events: Vec<OwnedNewEvent>,
    reply: oneshot::Sender<Result<Vec<Persisted>, StoreError>>,
    /// Whatever the caller must keep held until its event's commit has ended (the room's
    /// writer lock); dropped with the entry.
    _hold: Box<dyn Any + Send>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("id", &self.id)
            .field(
                "event_ids",
                &self.events.iter().map(|e| &e.event_id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Removes a caller's entry from the queue if the caller goes away before a leader took it.
struct Dequeue<'a> {
    group: &'a GroupCommit,
    id: u64,
}

impl Drop for Dequeue<'_> {
    fn drop(&mut self) {
        let removed = {
            let mut queue = self.group.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue
                .iter()
                .position(|q| q.id == self.id)
                .map(|at| queue.remove(at))
        };
        // Its hold drops here, outside the queue's lock.
        drop(removed);
    }
}

impl GroupCommit {
    /// Commits `events`, in order and all in one transaction (with whatever else is queued),
    /// and returns where each landed. `hold` is kept until their commit has ended, even if
    /// this future is dropped first; if it is dropped before a leader took them, they are
    /// never committed.
    pub(crate) async fn persist(
        &self,
        store: &Store,
        events: &[NewEvent<'_>],
        hold: Box<dyn Any + Send>,
    ) -> Result<Vec<Persisted>, StoreError> {
        let (reply, mut done) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Queued {
                id,
                events: events.iter().map(OwnedNewEvent::of).collect(),
                reply,
                _hold: hold,
            });
        let _dequeue = Dequeue { group: self, id };
        loop {
            let lead = tokio::select! {
                // Committed by another caller's batch.
                result = &mut done => return result.unwrap_or_else(|_| Err(lost())),
                lead = self.lead.clone().lock_owned() => lead,
            };
            // The batch that ended just before this caller took the lead may have carried its
            // event: then whatever is queued belongs to others, who lead for themselves.
            if let Ok(result) = done.try_recv() {
                return result;
            }
            let batch: Vec<Queued> = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                // Whole entries, up to MAX_BATCH events (the first entry always).
                let mut events = 0;
                let take = queue
                    .iter()
                    .take_while(|q| {
                        events += q.events.len();
                        events <= MAX_BATCH || events == q.events.len()
                    })
                    .count();
                queue.drain(..take).collect()
            };
            if batch.is_empty() {
                // Not queued and not answered: a batch that took it is still replying (a
                // leader keeps the lead until it has replied, so this should not happen).
                drop(lead);
                return done.await.unwrap_or_else(|_| Err(lost()));
            }
            // Always in a task of its own, which owns the batch (with its callers' holds) and
            // the lead: if this caller goes away (its client hung up), the batch still
            // commits, its callers' locks stay held until it has, and the others still get
            // their replies. Spawned from a worker thread, the task usually runs on that same
            // thread as soon as this caller yields.
            let store = store.clone();
            let committing = tokio::spawn(async move {
                commit(&store, batch).await;
                drop(lead);
            });
            let _ = committing.await;
            // With more than MAX_BATCH queued ahead of it, this caller's events are still queued,
            // and the callers it just answered have gone: it leads again.
            if let Ok(result) = done.try_recv() {
                return result;
            }
        }
    }
}

/// Test-only failpoint (the `failpoints` feature, which only dev-dependencies enable): while
/// this lives, every batch stops before its transaction, its events taken from the queue.
#[cfg(any(test, feature = "failpoints"))]
#[derive(Debug)]
pub struct CommitPause {
    _paused: tokio::sync::OwnedMutexGuard<()>,
    store: Store,
}

#[cfg(any(test, feature = "failpoints"))]
impl CommitPause {
    /// Waits until a batch has stopped at the pause.
    pub async fn reached(&self) {
        self.store.group_commit.reached.notified().await;
    }
}

#[cfg(any(test, feature = "failpoints"))]
impl Store {
    /// Test-only: pauses group commits until the returned guard drops (see [`CommitPause`]).
    pub async fn pause_commits(&self) -> CommitPause {
        CommitPause {
            _paused: self.group_commit.pause.clone().lock_owned().await,
            store: self.clone(),
        }
    }

    /// Test-only: how many events each group commit's transaction held since the last call,
    /// in order.
    pub fn take_commit_sizes(&self) -> Vec<usize> {
        std::mem::take(
            &mut *self
                .group_commit
                .sizes
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }
}

/// Commits a batch and replies to each of its callers.
async fn commit(store: &Store, batch: Vec<Queued>) {
    #[cfg(any(test, feature = "failpoints"))]
    if store.group_commit.pause.try_lock().is_err() {
        store.group_commit.reached.notify_one();
        drop(store.group_commit.pause.lock().await);
    }
    let events: Vec<NewEvent<'_>> = batch
        .iter()
        .flat_map(|q| q.events.iter().map(OwnedNewEvent::borrowed))
        .collect();
    #[cfg(any(test, feature = "failpoints"))]
    store
        .group_commit
        .sizes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(events.len());
    match store.persist_events(&events).await {
        Ok(persisted) => {
            drop(events);
            let mut persisted = persisted.into_iter();
            for queued in batch {
                let own: Vec<Persisted> = persisted.by_ref().take(queued.events.len()).collect();
                let _ = queued.reply.send(Ok(own));
            }
        }
        Err(error) if batch.len() == 1 => {
            drop(events);
            let queued = batch.into_iter().next().expect("one entry");
            let _ = queued.reply.send(Err(error));
        }
        Err(error) => {
            tracing::debug!(%error, entries = batch.len(), "a batch of events failed; committing its entries one by one");
            drop(events);
            for queued in batch {
                let own: Vec<NewEvent<'_>> =
                    queued.events.iter().map(OwnedNewEvent::borrowed).collect();
                let result = store.persist_events(&own).await;
                drop(own);
                let _ = queued.reply.send(result);
            }
        }
    }
}

/// A batch that dropped its reply without sending (its task panicked): the commit may or may
/// not have happened, as with a connection lost during `COMMIT`.
fn lost() -> StoreError {
    StoreError::Database(sqlx::Error::WorkerCrashed)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        CurrentStateChange, EventStatus, Placement, StoreOptions,
        test_support::{TestDatabase, test_backends},
    };

    fn event<'a>(room_nid: i64, event_id: &'a str, prev: &'a [String]) -> NewEvent<'a> {
        NewEvent {
            room_nid,
            event_id,
            event_type: "m.room.create",
            state_key: Some(""),
            sender: "@a:test",
            depth: 1,
            origin_server_ts: 1,
            json: r#"{"type":"m.room.create"}"#,
            prev_event_ids: prev,
            auth_event_ids: &[],
            state_group_before: None,
            replaces: None,
            status: EventStatus::Normal,
            placement: Placement::Live,
            current_state: CurrentStateChange::Extend,
            just_built: false,
            membership: None,
            txn: None,
            redaction: None,
            redaction_waits: None,
            redacted_by: None,
            delivery: Default::default(),
            push_actions: &[],
            relation: None,
            search: None,
            now: 1,
        }
    }

    /// A caller whose event sits behind more than a batch's worth of others leads the first
    /// batch, and then leads again for its own: it never waits for a leader that is not coming.
    #[tokio::test]
    async fn a_leader_queued_behind_a_full_batch_commits_its_own_event_too() {
        for kind in test_backends() {
            let db = TestDatabase::create(kind).await;
            let store = Store::open(&db.url, &StoreOptions::default())
                .await
                .unwrap();
            let room = store
                .create_room("!r:test", "12", "@a:test", false, 0)
                .await
                .unwrap();
            let prev: Vec<String> = Vec::new();
            let ids: Vec<String> = (0..MAX_BATCH + 5).map(|i| format!("$ahead{i}")).collect();
            // Callers that queued and went away (nobody of them will lead), each starting a
            // room of its own.
            let mut answers = Vec::new();
            for id in &ids {
                let (reply, answer) = oneshot::channel();
                let own_room = store
                    .create_room(&format!("!{}:test", &id[1..]), "12", "@a:test", false, 0)
                    .await
                    .unwrap();
                store.group_commit.queue.lock().unwrap().push(Queued {
                    id: u64::MAX,
                    events: vec![OwnedNewEvent::of(&event(own_room, id, &prev))],
                    reply,
                    _hold: Box::new(()),
                });
                answers.push(answer);
            }

            let own = tokio::time::timeout(
                Duration::from_secs(20),
                store.persist_event(&event(room, "$own", &prev)),
            )
            .await
            .unwrap_or_else(|_| panic!("{kind:?}: the caller waited for a leader that never came"))
            .unwrap();
            for (id, answer) in ids.iter().zip(answers) {
                let ahead = answer.await.unwrap().unwrap().remove(0);
                assert!(
                    ahead.stream_ordering < own.stream_ordering,
                    "{kind:?}: {id} first"
                );
            }
            store.close().await;
        }
    }

    /// What a local send does, as the service does it: takes the room's writer lock, reads
    /// the room's head, and persists a state event on it, handing the lock to the store.
    async fn send_locked(
        store: Store,
        lock: Arc<tokio::sync::Mutex<()>>,
        room: i64,
        id: &'static str,
    ) -> Persisted {
        let writing = lock.lock_owned().await;
        let head = store.send_context(room, &[], None).await.unwrap().head;
        let json = format!(r#"{{"type":"m.room.topic","content":{{"topic":"{id}"}}}}"#);
        store
            .persist_event_holding(
                &NewEvent {
                    event_type: "m.room.topic",
                    depth: head.max_depth + 1,
                    json: &json,
                    prev_event_ids: &head.prev_event_ids,
                    state_group_before: head.current_state_group,
                    ..event(room, id, &[])
                },
                writing,
            )
            .await
            .unwrap()
    }

    /// The room is one line ending at `last`, and its current state is the state after it.
    async fn assert_linear(store: &Store, room: i64, last: &Persisted, prev: &str) {
        assert_eq!(
            store.forward_extremities(room).await.unwrap(),
            vec![last.event_nid],
            "one forward extremity"
        );
        let edges = store.event_edges(last.event_nid).await.unwrap();
        let prevs: Vec<&str> = edges
            .iter()
            .filter(|e| e.kind == crate::EdgeKind::Prev)
            .map(|e| e.cited_event_id.as_str())
            .collect();
        assert_eq!(
            prevs,
            vec![prev],
            "the last event follows the head before it"
        );
        let ids = |rows: Vec<crate::EventRow>| {
            let mut ids: Vec<String> = rows.into_iter().map(|r| r.event_id).collect();
            ids.sort();
            ids
        };
        assert_eq!(
            ids(store.current_state(room, None).await.unwrap()),
            ids(store
                .state_at_group(last.state_group.unwrap())
                .await
                .unwrap()),
            "current state is the state after the head"
        );
    }

    async fn room_with_create(kind: crate::DatabaseKind) -> (TestDatabase, Store, i64) {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let room = store
            .create_room("!r:test", "12", "@a:test", false, 0)
            .await
            .unwrap();
        store
            .persist_event(&event(room, "$create", &[]))
            .await
            .unwrap();
        (db, store, room)
    }

    /// A send cancelled while its event waits in the queue is never committed, and its room's
    /// lock is free again at once: the next send builds on the real head.
    #[tokio::test]
    async fn a_send_cancelled_while_queued_is_never_committed() {
        for kind in test_backends() {
            let (_db, store, room) = room_with_create(kind).await;
            let other = store
                .create_room("!other:test", "12", "@a:test", false, 0)
                .await
                .unwrap();
            let lock = Arc::new(tokio::sync::Mutex::new(()));
            // Another room's commit holds the lead, paused.
            let paused = store.group_commit.pause.clone().lock_owned().await;
            let leader = tokio::spawn({
                let store = store.clone();
                async move { store.persist_event(&event(other, "$other", &[])).await }
            });
            store.group_commit.reached.notified().await;
            // A send queues behind it, then its caller goes away.
            let cancelled = tokio::spawn(send_locked(store.clone(), lock.clone(), room, "$gone"));
            while store.group_commit.queue.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cancelled.abort();
            assert!(cancelled.await.unwrap_err().is_cancelled());
            assert!(
                store.group_commit.queue.lock().unwrap().is_empty(),
                "{kind:?}: the cancelled event left the queue"
            );
            assert!(lock.try_lock().is_ok(), "{kind:?}: the room's lock is free");
            drop(paused);
            leader.await.unwrap().unwrap();

            let next = send_locked(store.clone(), lock.clone(), room, "$next").await;
            assert!(store.event("$gone").await.unwrap().is_none(), "{kind:?}");
            assert_linear(&store, room, &next, "$create").await;
            store.close().await;
        }
    }

    /// A send cancelled once a leader took its event into a batch: the event commits, and the
    /// room's lock stays held until it has, so the next send builds on it.
    #[tokio::test]
    async fn a_send_cancelled_during_its_commit_keeps_the_lock_until_it_ends() {
        for kind in test_backends() {
            let (_db, store, room) = room_with_create(kind).await;
            let lock = Arc::new(tokio::sync::Mutex::new(()));
            let paused = store.group_commit.pause.clone().lock_owned().await;
            let cancelled = tokio::spawn(send_locked(store.clone(), lock.clone(), room, "$first"));
            store.group_commit.reached.notified().await;
            cancelled.abort();
            assert!(cancelled.await.unwrap_err().is_cancelled());
            assert!(
                lock.try_lock().is_err(),
                "{kind:?}: the room's lock is released while its event is being committed"
            );
            let next = tokio::spawn(send_locked(store.clone(), lock.clone(), room, "$next"));
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(paused);
            let next = tokio::time::timeout(Duration::from_secs(20), next)
                .await
                .unwrap()
                .unwrap();
            assert!(store.event("$first").await.unwrap().is_some(), "{kind:?}");
            assert_linear(&store, room, &next, "$first").await;
            store.close().await;
        }
    }

    /// An entry of several events of one room, each citing the one before, commits them in
    /// order in one transaction; an entry one of whose events cannot be stored commits none of
    /// them, and the entry queued beside it in the same batch still lands.
    #[tokio::test]
    async fn an_entry_of_several_events_commits_all_in_order_or_none() {
        for kind in test_backends() {
            let (_db, store, room) = room_with_create(kind).await;
            let other = store
                .create_room("!other:test", "12", "@a:test", false, 0)
                .await
                .unwrap();
            let head = store.send_context(room, &[], None).await.unwrap().head;
            let chain = |ids: &[&'static str], dup_last: bool| -> Vec<(String, Vec<String>)> {
                let mut prev = head.prev_event_ids.clone();
                let mut out = Vec::new();
                for (i, id) in ids.iter().enumerate() {
                    let id = if dup_last && i == ids.len() - 1 {
                        "$create"
                    } else {
                        id
                    };
                    out.push((id.to_owned(), prev.clone()));
                    prev = vec![id.to_owned()];
                }
                out
            };
            let messages = |chain: &[(String, Vec<String>)]| -> Vec<OwnedNewEvent> {
                chain
                    .iter()
                    .enumerate()
                    .map(|(i, (id, prev))| {
                        OwnedNewEvent::of(&NewEvent {
                            event_type: "m.room.message",
                            state_key: None,
                            depth: head.max_depth + 1 + i as i64,
                            json: r#"{"type":"m.room.message","content":{}}"#,
                            prev_event_ids: prev,
                            state_group_before: head.current_state_group,
                            ..event(room, id, &[])
                        })
                    })
                    .collect()
            };
            // A failing entry (its last event's id is stored already) and another room's event
            // in the same batch: the batch fails, each entry is retried alone.
            let bad = messages(&chain(&["$b1", "$b2", "$b3"], true));
            let paused = store.group_commit.pause.clone().lock_owned().await;
            let failing = tokio::spawn({
                let store = store.clone();
                async move {
                    let rows: Vec<NewEvent<'_>> = bad.iter().map(OwnedNewEvent::borrowed).collect();
                    store.persist_events_holding(&rows, ()).await
                }
            });
            store.group_commit.reached.notified().await;
            let beside = tokio::spawn({
                let store = store.clone();
                async move { store.persist_event(&event(other, "$beside", &[])).await }
            });
            while store.group_commit.queue.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            drop(paused);
            assert!(failing.await.unwrap().is_err(), "{kind:?}");
            beside.await.unwrap().unwrap();
            for id in ["$b1", "$b2"] {
                assert!(
                    store.event(id).await.unwrap().is_none(),
                    "{kind:?}: {id} written"
                );
            }

            // The same run without the bad event lands whole, in order, on one line.
            let good = messages(&chain(&["$m1", "$m2", "$m3"], false));
            let rows: Vec<NewEvent<'_>> = good.iter().map(OwnedNewEvent::borrowed).collect();
            store.take_commit_sizes();
            let persisted = store.persist_events_holding(&rows, ()).await.unwrap();
            assert_eq!(
                store.take_commit_sizes(),
                vec![3],
                "{kind:?}: one transaction"
            );
            let positions: Vec<i64> = persisted.iter().map(|p| p.stream_ordering).collect();
            assert!(
                positions.windows(2).all(|w| w[1] == w[0] + 1),
                "{kind:?}: {positions:?}"
            );
            assert_linear(&store, room, &persisted[2], "$m2").await;
            store.close().await;
        }
    }
}

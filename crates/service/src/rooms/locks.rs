//! The per-room locks of this process, in one place, with the order they are taken in.
//!
//! Lock order (a task that holds one may take only those after it, never one before):
//!
//! 0. [`RoomLocks::remote_join`] of a room: one join through another server at a time (held
//!    across the handshake's requests; the next joiner then finds this server in the room).
//! 1. [`RoomLocks::upgrade`] of a room: one upgrade of a room at a time. Held across the whole
//!    upgrade, which sends events into the old room and the new one.
//! 2. [`RoomLocks::writer`] of a room: one writer per room. Held from reading the room's head
//!    and current state until its event is persisted (a local send from building its event, a
//!    remote event from its checks against the stored states to its append), so that what an
//!    event was decided against is what it is appended on, and two local sends do not fork the
//!    room's graph for nothing. At most one writer lock at a time: nothing that holds a room's writer
//!    waits for another room's.
//!    A send hands its guard to the store with its event, which keeps it until the commit
//!    has ended even if the send is cancelled (`Store::persist_event_holding`).
//!
//! Inside the store, a writer then queues on group commit and the database's own transaction
//! (`myelin_store`), which take no lock of this module.
//!
//! Maps hold their locks weakly: an entry lives while someone holds or waits for its lock, and
//! dead entries are pruned as the map grows, so a process that has written to a million rooms
//! keeps locks only for those being written now.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The map only prunes once it holds this many entries, so small servers never scan.
const PRUNE_FLOOR: usize = 64;

/// Async locks by key (a room id), created on first use and dropped when unused.
#[derive(Debug, Default)]
pub(crate) struct LockMap {
    inner: Mutex<LockMapInner>,
}

#[derive(Debug, Default)]
struct LockMapInner {
    locks: HashMap<String, Weak<AsyncMutex<()>>>,
    /// Prune when the map reaches this size: twice the live entries at the last prune, so the
    /// scan costs O(1) per insertion on average.
    prune_at: usize,
}

impl LockMap {
    /// Waits for the lock of `key` and holds it until the guard drops.
    pub(crate) async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        self.entry(key).lock_owned().await
    }

    /// The lock of `key`: the live one if anyone holds or waits for it, else a new one.
    fn entry(&self, key: &str) -> Arc<AsyncMutex<()>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = inner.locks.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(AsyncMutex::new(()));
        inner.locks.insert(key.to_owned(), Arc::downgrade(&lock));
        if inner.locks.len() >= inner.prune_at.max(PRUNE_FLOOR) {
            inner.locks.retain(|_, lock| lock.strong_count() > 0);
            inner.prune_at = 2 * inner.locks.len();
        }
        lock
    }

    /// How many entries the map holds (live or not yet pruned).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .locks
            .len()
    }
}

/// The per-room locks, by room id. Take them in the order of the module's documentation.
#[derive(Debug, Default)]
pub(crate) struct RoomLocks {
    joins: LockMap,
    upgrades: LockMap,
    writers: LockMap,
}

/// Held while a local user joins a room through another server (lock order 0: held across
/// the handshake's requests, before any other lock of the room).
#[must_use = "the room is locked only while the guard lives"]
pub(crate) struct RemoteJoinGuard(#[allow(dead_code)] OwnedMutexGuard<()>);

/// Held while a room is being upgraded (lock order 1).
#[must_use = "the room is locked only while the guard lives"]
pub(crate) struct UpgradeGuard(#[allow(dead_code)] OwnedMutexGuard<()>);

/// Held while a room's next event is built and persisted (lock order 2). Shared by
/// [`WriterGuard::share`]: the room stays locked until every share has dropped (a batch of
/// received events holds it on while the store holds a share until its commit has ended).
#[must_use = "the room is locked only while the guard lives"]
pub(crate) struct WriterGuard(#[allow(dead_code)] Arc<OwnedMutexGuard<()>>);

impl WriterGuard {
    /// Another hold of the same lock.
    pub(crate) fn share(&self) -> WriterGuard {
        WriterGuard(self.0.clone())
    }
}

impl RoomLocks {
    /// Lock order 0: joining `room_id` through another server. One such join per room at a
    /// time: the next one finds this server in the room and joins locally.
    pub(crate) async fn remote_join(&self, room_id: &str) -> RemoteJoinGuard {
        RemoteJoinGuard(self.joins.lock(room_id).await)
    }

    /// Lock order 1: the upgrade lock of `room_id`. Take it before any writer lock.
    pub(crate) async fn upgrade(&self, room_id: &str) -> UpgradeGuard {
        UpgradeGuard(self.upgrades.lock(room_id).await)
    }

    /// Lock order 2: the writer lock of `room_id`. Hold no other room's writer lock.
    pub(crate) async fn writer(&self, room_id: &str) -> WriterGuard {
        WriterGuard(Arc::new(self.writers.lock(room_id).await))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_holder_per_key_and_keys_are_independent() {
        let map = LockMap::default();
        let held = map.lock("!a:test").await;
        // Another key is free.
        let _other = map.lock("!b:test").await;
        // The same key waits until the holder lets go.
        let waiting = tokio::time::timeout(Duration::from_millis(50), map.lock("!a:test")).await;
        assert!(waiting.is_err(), "a second holder of one room's lock");
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(5), map.lock("!a:test")).await;
        assert!(again.is_ok(), "the lock is free once its holder lets go");
    }

    #[tokio::test]
    async fn unused_locks_are_pruned() {
        let map = LockMap::default();
        let kept = map.lock("!kept:test").await;
        for i in 0..10_000 {
            drop(map.lock(&format!("!{i}:test")).await);
        }
        assert!(
            map.len() <= 2 * PRUNE_FLOOR,
            "{} entries for one live lock",
            map.len()
        );
        // The held lock survived the pruning: it still excludes.
        let waiting = tokio::time::timeout(Duration::from_millis(50), map.lock("!kept:test")).await;
        assert!(waiting.is_err(), "pruning dropped a held lock");
        drop(kept);
    }
}

//! The per-destination backoff: one record of which servers are failing, consulted by every
//! outbound federation request ([`super::Outbound::send`]: key fetches, notary queries, profile
//! and directory queries, transactions, and joins to come).
//!
//! After the n-th consecutive failure a destination gets no request for `min * 2^(n-1)`, capped
//! at `max` (defaults 10 s and 24 h: a server restarting for an upgrade is retried within a
//! minute or two, a dead one costs about 14 attempts on its first day and one a day after).
//! When the wait is over, the first request through claims the next window, so however many
//! callers want the destination, one request goes per window. A destination that answers, or
//! that sends this server a request of its own ([`Backoff::mark_alive`]), is up again at once
//! and the sender is told so ([`Backoff::subscribe_revived`]).
//!
//! Failing destinations are persisted (`federation_backoff`), so a restart does not hammer a
//! dead server; healthy destinations cost no write. A destination going down and coming back
//! is logged once each.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use myelin_store::{BackoffRow, Store, StoreError};
use ruma::{OwnedServerName, ServerName};
use tokio::sync::broadcast;

use crate::now_millis;

/// How long a failing destination is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The wait after the first failure.
    pub min: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            min: Duration::from_secs(10),
            max: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl BackoffPolicy {
    /// The wait after `failures` consecutive failures (at least one).
    pub fn wait_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(40);
        self.min
            .saturating_mul(2u32.saturating_pow(doublings.min(31)))
            .min(self.max)
    }
}

/// A destination that is backing off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownDestination {
    /// Consecutive failures.
    pub failures: u32,
    /// No request goes before this (ms since the epoch).
    pub retry_at_ms: i64,
    /// The first failure of this outage (ms).
    pub down_since_ms: i64,
    /// When the last failure was counted (ms): a request started before it that fails too
    /// is the same outage seen twice, not a new failure.
    pub counted_at_ms: i64,
    pub last_error: String,
}

/// The backoff of every destination.
#[derive(Debug)]
pub struct Backoff {
    store: Store,
    policy: BackoffPolicy,
    down: Mutex<HashMap<OwnedServerName, DownDestination>>,
    revived: broadcast::Sender<OwnedServerName>,
}

impl Backoff {
    /// The backoff with the destinations still failing when the server last ran.
    pub async fn load(store: Store, policy: BackoffPolicy) -> Result<Self, StoreError> {
        let mut down = HashMap::new();
        for row in store.federation_backoffs().await? {
            let Ok(server) = OwnedServerName::try_from(row.destination.as_str()) else {
                continue;
            };
            down.insert(
                server,
                DownDestination {
                    failures: u32::try_from(row.failures).unwrap_or(u32::MAX).max(1),
                    retry_at_ms: row.retry_at_ts,
                    down_since_ms: row.down_since_ts,
                    counted_at_ms: 0,
                    last_error: row.last_error,
                },
            );
        }
        if !down.is_empty() {
            tracing::info!(
                destinations = down.len(),
                "federation: destinations still backing off from before the restart"
            );
        }
        Ok(Backoff {
            store,
            policy,
            down: Mutex::new(down),
            revived: broadcast::channel(256).0,
        })
    }

    pub fn policy(&self) -> BackoffPolicy {
        self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedServerName, DownDestination>> {
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a request to `server` may go at `now`: `Err(retry_at_ms)` while it backs off.
    /// When its wait is over, this request claims the next window (as if it will fail), so
    /// concurrent callers do not all try; its outcome then decides.
    pub fn admit(&self, server: &ServerName, now: i64) -> std::result::Result<(), i64> {
        let mut down = self.lock();
        match down.get_mut(server) {
            None => Ok(()),
            Some(state) if state.retry_at_ms > now => Err(state.retry_at_ms),
            Some(state) => {
                state.retry_at_ms = now + millis(self.policy.wait_after(state.failures));
                Ok(())
            }
        }
    }

    /// When `server` may next be sent a request, if it is backing off.
    pub fn retry_at(&self, server: &ServerName) -> Option<i64> {
        self.lock().get(server).map(|state| state.retry_at_ms)
    }

    /// `server`'s consecutive failures (0: up).
    pub fn failures(&self, server: &ServerName) -> u32 {
        self.lock().get(server).map_or(0, |state| state.failures)
    }

    /// Every destination backing off.
    pub fn down_destinations(&self) -> Vec<(OwnedServerName, DownDestination)> {
        let mut out: Vec<_> = self
            .lock()
            .iter()
            .map(|(server, state)| (server.clone(), state.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Destinations that came back (answered, or sent a request), for the sender to wake.
    pub fn subscribe_revived(&self) -> broadcast::Receiver<OwnedServerName> {
        self.revived.subscribe()
    }

    /// A request to `server` that started at `started_ms` failed with `error`: the
    /// destination waits longer (unless that failure was already counted through another
    /// request of the same moment).
    pub async fn failed(&self, server: &ServerName, started_ms: i64, error: &str) {
        let now = now_millis();
        let row = {
            let mut down = self.lock();
            let state = down
                .entry(server.to_owned())
                .or_insert_with(|| DownDestination {
                    failures: 0,
                    retry_at_ms: now,
                    down_since_ms: now,
                    counted_at_ms: 0,
                    last_error: String::new(),
                });
            if state.failures > 0 && state.counted_at_ms >= started_ms {
                return;
            }
            state.failures = state.failures.saturating_add(1);
            let wait = self.policy.wait_after(state.failures);
            state.retry_at_ms = now + millis(wait);
            state.counted_at_ms = now;
            state.last_error = error.chars().take(512).collect();
            if state.failures == 1 {
                tracing::warn!(
                    destination = %server,
                    error,
                    retry_in_secs = wait.as_secs_f64(),
                    "federation destination is down: backing off"
                );
            } else {
                tracing::info!(
                    destination = %server,
                    error,
                    failures = state.failures,
                    retry_in_secs = wait.as_secs_f64(),
                    "federation destination still down"
                );
            }
            BackoffRow {
                destination: server.to_string(),
                failures: i64::from(state.failures),
                retry_at_ts: state.retry_at_ms,
                down_since_ts: state.down_since_ms,
                last_error: state.last_error.clone(),
            }
        };
        if let Err(err) = self.store.set_federation_backoff(&row).await {
            tracing::warn!(destination = %server, %err, "could not persist a destination's backoff");
        }
    }

    /// `server` answered a request: it is up.
    pub async fn answered(&self, server: &ServerName) {
        self.revive(server, "answered").await;
    }

    /// `server` sent this server an authenticated request: it is up, and whatever waits for it
    /// goes now. Cheap when it was not backing off (one map lookup), so every inbound request
    /// may call it.
    pub async fn mark_alive(&self, server: &ServerName) {
        self.revive(server, "sent us a request").await;
    }

    async fn revive(&self, server: &ServerName, how: &str) {
        let Some(state) = self.lock().remove(server) else {
            return;
        };
        tracing::info!(
            destination = %server,
            how,
            down_for_secs = (now_millis() - state.down_since_ms).max(0) / 1000,
            failures = state.failures,
            "federation destination is back"
        );
        if let Err(err) = self.store.clear_federation_backoff(server.as_str()).await {
            tracing::warn!(destination = %server, %err, "could not clear a destination's backoff");
        }
        let _ = self.revived.send(server.to_owned());
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_the_minimum_up_to_the_cap() {
        let policy = BackoffPolicy::default();
        let waits: Vec<u64> = (1..=15).map(|n| policy.wait_after(n).as_secs()).collect();
        assert_eq!(
            waits,
            [
                10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 20480, 40960, 81920, 86400
            ]
        );
        assert_eq!(policy.wait_after(1000).as_secs(), 86400, "no overflow");
        assert_eq!(policy.wait_after(0).as_secs(), 10);
    }
}

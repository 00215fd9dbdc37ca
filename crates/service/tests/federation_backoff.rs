//! The per-destination backoff with its store: one request per window however many callers
//! (the first after the wait claims the next window), doubling waits up to the cap, a failure
//! seen twice through overlapping requests counted once, persistence across a restart, and
//! revival by an answer or an inbound request (with the sender told). On both backends.

use std::time::Duration;

use myelin_service::{
    federation::{Backoff, BackoffPolicy},
    now_millis,
};
use myelin_store::{
    Store, StoreOptions,
    test_support::{TestDatabase, test_backends},
};
use ruma::ServerName;

fn dead() -> &'static ServerName {
    <&ServerName>::try_from("dead.test").unwrap()
}

fn policy() -> BackoffPolicy {
    BackoffPolicy {
        min: Duration::from_secs(10),
        max: Duration::from_secs(40),
    }
}

#[tokio::test]
async fn one_request_per_window_doubling_to_the_cap_and_kept_across_restarts() {
    for kind in test_backends() {
        let db = TestDatabase::create(kind).await;
        let store = Store::open(&db.url, &StoreOptions::default())
            .await
            .unwrap();
        let backoff = Backoff::load(store.clone(), policy()).await.unwrap();
        let now = now_millis();
        assert_eq!(backoff.admit(dead(), now), Ok(()), "a healthy destination");

        backoff.failed(dead(), now, "connection refused").await;
        let retry_at = backoff.retry_at(dead()).unwrap();
        assert!((now + 10_000..now + 11_000).contains(&retry_at), "{kind:?}");
        assert_eq!(backoff.admit(dead(), now + 5_000), Err(retry_at));
        // A second request that was already under way when the first failed: same outage.
        backoff.failed(dead(), now, "connection refused").await;
        assert_eq!(backoff.failures(dead()), 1, "{kind:?}: counted once");

        // The wait is over: the first caller goes (claiming the next window), the others wait.
        assert_eq!(backoff.admit(dead(), retry_at), Ok(()));
        assert!(
            backoff.admit(dead(), retry_at).is_err(),
            "{kind:?}: one per window"
        );
        let mut waits = Vec::new();
        for _ in 0..3 {
            // Each attempt starts after the last failure was counted.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let started = now_millis();
            backoff.failed(dead(), started, "timed out").await;
            waits.push((backoff.retry_at(dead()).unwrap() - started + 500) / 1000);
        }
        assert_eq!(waits, [20, 40, 40], "{kind:?}: doubling up to the cap");
        assert_eq!(backoff.failures(dead()), 4);

        // A restart reads the backoff back.
        let retry_at = backoff.retry_at(dead()).unwrap();
        let again = Backoff::load(store.clone(), policy()).await.unwrap();
        assert_eq!(again.failures(dead()), 4, "{kind:?}");
        assert_eq!(again.retry_at(dead()), Some(retry_at));
        assert!(again.admit(dead(), now_millis()).is_err());

        // An inbound request revives it at once, for good, and the sender hears of it.
        let mut revived = again.subscribe_revived();
        again.mark_alive(dead()).await;
        assert_eq!(again.failures(dead()), 0);
        assert_eq!(again.admit(dead(), now_millis()), Ok(()));
        assert_eq!(revived.try_recv().unwrap().as_str(), "dead.test");
        assert!(store.federation_backoffs().await.unwrap().is_empty());
        let third = Backoff::load(store.clone(), policy()).await.unwrap();
        assert_eq!(third.retry_at(dead()), None, "{kind:?}");
        // Marking a healthy destination alive is a no-op (no notice).
        third.mark_alive(dead()).await;
        assert!(third.subscribe_revived().try_recv().is_err());

        // An answer revives too.
        backoff.answered(dead()).await;
        assert_eq!(backoff.failures(dead()), 0);
    }
}
